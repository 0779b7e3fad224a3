"""
How a training run spreads over the processes torchrun starts: DDP or FSDP2.

- ddp (the default): every rank holds the whole model, its gradients and AdamW's two moments (about 16 bytes a
  parameter in float32) and averages the gradients once per step, after its last micro-step.
- fsdp: each transformer Block, then the root GPT, is sharded with FSDP2 (torch.distributed.fsdp.fully_shard): a
  rank keeps 1/world_size of every parameter, gradient and moment, and gathers a unit's weights only while it runs.
  The root's unit holds the embeddings (tied to the head), the final norm and the memory add-on (gmm.py). Every
  rank evaluates (the model's weights live on all of them); rank 0 writes.

Checkpoints are the same file whatever the parallelism: the full model state dict and torch's usual optimizer
state dict (parameters numbered in the optimizer's order), gathered to rank 0 on the CPU through
torch.distributed.checkpoint.state_dict under fsdp. So a run saved under fsdp resumes under ddp or on one device,
and the reverse, exactly.
"""

from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed import init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from common import DTYPES
from model import GPT, GPTConfig

# torch.distributed's fsdp, tensor and checkpoint packages take about a second to import, so only a sharded run
# imports them (shard, and the state dicts of a sharded model). Until one of them is imported no FSDP module or
# DTensor can exist, which is how the checks below answer without importing them (loaded).

PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: one process (the defaults), or one of torchrun's world_size ranks."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False

    @property
    def master(self) -> bool:
        """Rank 0 logs, evaluates under ddp, and writes checkpoints."""
        return self.rank == 0


def start(device: str, backend: str) -> tuple[Ranks, str]:
    """Join torchrun's process group when it started this process (RANK is set); the ranks and this rank's
    device (cuda:<local rank> on GPUs). backend 'auto' is nccl on CUDA, gloo elsewhere."""
    if int(os.environ.get("RANK", -1)) == -1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]), True)
    if device.startswith("cuda"):
        device = f"cuda:{ranks.local_rank}"
        torch.cuda.set_device(device)
    init_process_group(backend=backend if backend != "auto" else ("nccl" if device.startswith("cuda") else "gloo"))
    return ranks, device


def finish() -> None:
    """The end of a run every rank reaches together, called once the run's model is out of scope (a no-op without a
    process group). Frees what the model, its optimizer and closures held (under fsdp, the last collectives' work
    objects among them) while the interpreter is whole: left to the interpreter's exit, gloo's teardown can abort
    the process (SIGABRT, 'terminate called without an active exception') after the run is done. Then waits for the
    others (no rank tears down its connections while a peer's last collective is in flight) and leaves the group."""
    if not torch.distributed.is_initialized():
        return
    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def shard(model: GPT, dtype: str) -> GPT:
    """FSDP2 in place: rank 0's weights, then each Block and the root sharded over the process group. Under
    bfloat16 the gathered weights compute in bfloat16 and gradients are reduced in float32 (the sharded weights
    stay float32). forward_segments (what evaluation calls) runs under the same hooks as forward."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    with torch.no_grad():  # rank 0's weights everywhere first, as DDP does (each rank seeded its own init)
        for t in model.state_dict().values():
            torch.distributed.broadcast(t, src=0)
    compute = DTYPES[dtype]
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    kwargs: dict[str, Any] = {"mp_policy": policy} if compute != torch.float32 else {}
    for block in model.transformer.h:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    register_fsdp_forward_method(model, "forward_segments")
    return model


def check_dtype(fsdp: bool, dtype: str) -> None:
    """fsdp computes in bfloat16 or float32: float16 needs a gradient scaler, which only DDP's path has."""
    if fsdp and dtype == "float16":
        raise ValueError("parallel = 'fsdp' trains in bfloat16 or float32 (float16's gradient scaling is DDP's only)")


def loaded(module: str, name: str) -> type | None:
    """The class module.name if that module has been imported (by this file or anyone), else None."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def sharded(model: torch.nn.Module) -> bool:
    fsdp_module = loaded("torch.distributed.fsdp", "FSDPModule")
    return fsdp_module is not None and isinstance(model, fsdp_module)


def wrap_ddp(model: torch.nn.Module, ranks: Ranks, device_type: str, find_unused: bool) -> torch.nn.Module:
    """DDP around the model. find_unused: some step leaves parameters out of the graph (the memory's write path,
    when a write reaches no loss: see unused_parameters), which DDP must then search for after every backward."""
    device_ids = [ranks.local_rank] if device_type == "cuda" else None
    return DDP(model, device_ids=device_ids, find_unused_parameters=find_unused)


def unused_parameters(config: GPTConfig, fewest_segments: int, bptt_segments: int = 0) -> bool:
    """Whether a step can leave memory parameters out of the graph, so that DDP must search for them: when no
    write reaches a loss, because a sequence has one segment (the only write is the last), truncated BPTT detaches
    every segment's memory (bptt_segments = 1), or the segments carry nothing (registers). Otherwise every
    parameter takes part in every step and the search (a walk of the graph after each backward) is skipped."""
    if config.gmm_experts == 0:
        return False
    return fewest_segments == 1 or bptt_segments == 1 or not config.gmm_carry


def set_gradient_sync(model: torch.nn.Module, sync: bool) -> None:
    """Reduce gradients across ranks after this micro-step's backward (the last of a step) or not (the others)."""
    if sharded(model):
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]
    elif isinstance(model, DDP):
        model.require_backward_grad_sync = sync


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a DTensor (fsdp: a sharded parameter, gradient or gradient norm) gathered whole."""
    dtensor = loaded("torch.distributed.tensor", "DTensor")
    return t.full_tensor() if dtensor is not None and isinstance(t, dtensor) else t  # type: ignore[attr-defined]


def local(t: torch.Tensor) -> torch.Tensor:
    """What this rank holds of a tensor: a DTensor's local shard, else the tensor."""
    dtensor = loaded("torch.distributed.tensor", "DTensor")
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t  # type: ignore[attr-defined]


def full_options() -> Any:
    """torch.distributed.checkpoint's options for whole tensors, on rank 0's CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The model's state dict with whole tensors. Under fsdp every rank must call it; rank 0 gets the tensors."""
    if not sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return dict(get_model_state_dict(model, options=full_options()))


def optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() as one process would have it, whatever the parallelism. Under fsdp every rank must
    call it; rank 0 gets the state, gathered whole and renumbered from parameter names to torch's usual indices."""
    if not sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name: dict[str, Any] = dict(get_optimizer_state_dict(model, optimizer, options=full_options()))
    if not by_name:  # ranks other than 0
        return {}
    index = names_to_indices(by_name["param_groups"])
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    return {"state": {index[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state written by optimizer_state_dict (or by optimizer.state_dict() in one process) into the
    optimizer of this run, sharded or not. Under fsdp every rank loads it whole and keeps its shards."""
    if not sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # the names, in the optimizer's order: the same groups the checkpoint numbered, from this run's parameters
    names = {id(p): n for n, p in model.named_parameters()}
    order = [{"params": [names[id(p)] for p in g["params"]]} for g in optimizer.param_groups]
    name = {i: n for n, i in names_to_indices(order).items()}
    groups = [{**g, "params": [name[i] for i in g["params"]]} for g in state["param_groups"]]
    by_name: dict[str, Any] = {"state": {name[i]: s for i, s in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def names_to_indices(param_groups: list[dict[str, Any]]) -> dict[str, int]:
    """Parameter name -> the index torch's optimizer.state_dict() gives it: numbered in order through the groups."""
    return {n: i for i, n in enumerate(n for g in param_groups for n in g["params"])}
