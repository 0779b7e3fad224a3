"""
Share a trained model: turn an out_dir's checkpoint into a folder the Hugging Face Hub takes as it is, and push it.

$ python export.py --out_dir=out-shakespeare-char --to=exports/shakespeare-char
$ python export.py --out_dir=out-gmm-shakespeare --to=exports/gmm-shakespeare --push_to_hub=you/gmm-shakespeare

- A model without memory becomes a transformers GPT-2 folder (config.json, model.safetensors and the tokenizer:
  GPT-2's for a BPE dataset, a tokenizer.json built with `tokenizers` for a character-level or synthetic one), so
  GPT2LMHeadModel / AutoModelForCausalLM and AutoTokenizer load it, and tools built on them (lm-evaluation-harness)
  run on it. Its logits are the project's (a model trained with bias=False gets zero biases).
- A model with memory is saved in the project's own format by GPT.save_pretrained (config.json holding every
  GPTConfig field, model.safetensors), which GPT.from_pretrained loads.
- Both get meta.json (the dataset's tokenizer, as train.py and sample.py read it) and a model card (README.md): what
  the model is, its settings, data and tokenizer, its measured results from metrics.jsonl, the command that trained
  it, the project's commit, and how to load it. Only safetensors, JSON and text: no pickle.

--init_from=<folder or owner/name> in train.py (fine-tuning) and sample.py loads either kind. --push_to_hub uploads
the folder (the token from HF_TOKEN, a .env file, or `hf auth login`); an export folder that exists is not
overwritten unless --overwrite=True.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from common import fail, git_commit, load_checkpoint, read_metrics
from configurator import ConfigError, configure
from model import GPT, GPTConfig

FORMATS = ("auto", "transformers", "project")
# what may be in an export: anything else (a pickle, a .bin, a .pt) is refused before it is written
ALLOWED_SUFFIXES = (".json", ".safetensors", ".txt", ".md")


@dataclass
class ExportConfig:
    out_dir: str = "out"  # the run whose ckpt.pt (and metrics.jsonl) is exported
    to: str = ""  # the export folder
    push_to_hub: str = ""  # owner/name: upload the folder to this Hub repo (made if missing)
    private: bool = False  # a repo made by push_to_hub is private
    overwrite: bool = False  # replace an export folder that exists
    # auto: a transformers GPT-2 where the model is one (no memory, learned positions), else the project's format;
    # transformers: insist on a GPT-2 that transformers loads; project: the project's format whatever the model
    format: str = "auto"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format = '{self.format}' must be one of {', '.join(FORMATS)}")
        if self.push_to_hub:
            import hub

            if not hub.REPO_ID.fullmatch(self.push_to_hub):
                raise ValueError(f"push_to_hub = '{self.push_to_hub}' must be a Hub repo id, owner/name")


# --- memory off: a transformers GPT-2 ---------------------------------------------------------------------------------

# nanoGPT's Linear weights are the transpose of GPT-2's Conv1D ones
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def transformers_config(config: GPTConfig) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        activation_function="gelu_new" if config.gelu == "tanh" else "gelu",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )


def to_transformers(model: GPT) -> Any:
    """The GPT2LMHeadModel with the model's weights (zeros for the biases a bias=False model lacks)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(transformers_config(model.config))
    ours = model.state_dict()
    theirs = hf.state_dict()
    with torch.no_grad():
        for key, tensor in theirs.items():
            if key.endswith((".attn.masked_bias", ".attn.bias")) and key not in ours:
                continue  # the causal-mask buffers some transformers versions keep
            if key in ours:
                tensor.copy_(ours[key].t() if key.endswith(TRANSPOSED) else ours[key])
            elif key.endswith(".bias") and not model.config.bias:
                tensor.zero_()
            else:
                raise ValueError(f"the model has no weight for transformers' {key}")
    return hf


# --- tokenizers ---------------------------------------------------------------------------------------------------


def save_tokenizer(meta: dict[str, Any], folder: Path, block_size: int) -> None:
    """The dataset's tokenizer as files AutoTokenizer loads: GPT-2's own for BPE, else a tokenizer.json."""
    from transformers import GPT2Tokenizer, PreTrainedTokenizerFast

    kind = meta["tokenizer"]
    if kind == "gpt2":
        from tiktoken.load import read_file_cached

        from tokenizer import gpt2_encoding

        gpt2_encoding()  # one actionable line if tiktoken's files are neither cached nor downloadable
        base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
        # GPT-2's vocabulary and merges, the files tiktoken builds its encoding from (and caches)
        vocab = json.loads(read_file_cached(base + "encoder.json"))
        merges = [tuple(m.split(" ")) for m in read_file_cached(base + "vocab.bpe").decode().splitlines()[1:] if m]
        tok: Any = GPT2Tokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]  # pairs, as `tokenizers` takes
        tok.model_max_length = block_size
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=build_word_tokenizer(meta), clean_up_tokenization_spaces=False)
        tok.model_max_length = block_size
    tok.save_pretrained(folder)


def build_word_tokenizer(meta: dict[str, Any]) -> Any:
    """A `tokenizers` Tokenizer for the project's char and synthetic tokenizers: one id per character (joined
    without spaces) or per space-separated name (joined with spaces)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    itos = meta["itos"]
    vocab = {s: i for i, s in enumerate(itos)}
    if meta["tokenizer"] == "char":
        unk = next(c for c in ("\ufffd", "\x00", "\x01") if c not in vocab)  # unused: every text char is in vocab
        tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
    elif meta["tokenizer"] == "synthetic":
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        raise ValueError(f"tokenizer '{meta['tokenizer']}' has no export: char, gpt2 and synthetic do")
    return tok


# --- the model card -----------------------------------------------------------------------------------------------


def training_command(ckpt: dict[str, Any]) -> str:
    """The command that trained the checkpoint: as typed (checkpoints from now on keep it), else its settings that
    differ from train.py's defaults."""
    if ckpt.get("argv") is not None:
        return " ".join(["python train.py", *ckpt["argv"]])
    from train import TrainConfig

    defaults = {**asdict(TrainConfig()), **asdict(GPTConfig(bias=False))}
    saved = {**ckpt.get("config", {}), **ckpt["model_args"]}
    changed = [f"--{k}={v}" for k, v in saved.items() if k in defaults and defaults[k] != v]
    return " ".join(["python train.py", *changed])


def results_table(records: list[dict[str, Any]]) -> list[str]:
    evals = [r for r in records if r.get("event") == "eval"]
    if not evals:
        return ["No evaluation was logged (no metrics.jsonl in the run's out_dir)."]
    last = evals[-1]
    best = min(evals, key=lambda r: r["val_loss"])
    lines = [
        f"Measured by train.py's evaluation (metrics.jsonl), at iteration {last['iter']:,} "
        f"({last.get('tokens', 0):,} training tokens):",
        "",
        "| figure | last evaluation | best val loss |",
        "|---|---|---|",
        f"| iteration | {last['iter']} | {best['iter']} |",
        f"| train loss | {last['train_loss']:.4f} | {best['train_loss']:.4f} |",
        f"| val loss | {last['val_loss']:.4f} | {best['val_loss']:.4f} |",
    ]
    for key, name in (
        ("val_acc_answer", "recall accuracy (whole answers, val)"),
        ("val_acc_token", "answer tokens right (val)"),
    ):
        if key in last:
            lines.append(f"| {name} | {last[key]:.3f} | {best.get(key, float('nan')):.3f} |")
    if last.get("val_seg_loss") and len(last["val_seg_loss"]) > 1:
        segs = ", ".join(f"{v:.3f}" for v in last["val_seg_loss"])
        lines += ["", f"Val loss per segment (1 to {len(last['val_seg_loss'])}), last evaluation: {segs}."]
    return lines


def model_card(model: GPT, ckpt: dict[str, Any], records: list[dict[str, Any]], kind: str, repo: str) -> str:
    """The export's README.md: YAML metadata, then what the model is, how to load it, how it was trained and its
    last evaluation. One function because most of it is the card's text, a template read top to bottom."""
    cfg, meta = model.config, ckpt.get("tokenizer_meta") or {"tokenizer": "gpt2", "vocab_size": 50257}
    run = ckpt.get("config", {})
    n_params = model.get_num_params()
    memory = (
        ("no memory: a plain GPT-2 architecture" if cfg.pos_emb == "learned" and not cfg.token_shift else "no memory")
        if cfg.gmm_experts == 0
        else f"a gated memory mixture of {cfg.gmm_experts} expert bank(s) of {cfg.gmm_slots} slots, read at the start "
        f"and written at the end of every {cfg.block_size}-token segment (top-k {cfg.gmm_top_k or 'dense'}, "
        f"shared expert {cfg.gmm_shared_expert}, read {cfg.gmm_read})"
    )
    if cfg.pos_emb == "rope":
        memory += (
            ", and rotary position embeddings (rope), which transformers' GPT-2 cannot hold: it loads with the "
            "project's code"
        )
    if cfg.token_shift:
        memory += (
            ", and a token shift (each token's embedding adds its predecessor's), which loads with the project's code"
        )
    name = repo or "<folder>"
    if kind == "gpt2":
        header = ["library_name: transformers", "pipeline_tag: text-generation", "tags: [gpt2, nanogpt]"]
        load = [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{name}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            "```",
            "",
            "or with the project: `python sample.py --init_from=" + name + "`.",
        ]
    else:
        header = ["library_name: gmm-gpt", "pipeline_tag: text-generation", "tags: [gated-memory-mixture, nanogpt]"]
        load = [
            "With the project's code (its `model.py`):",
            "",
            "```python",
            "from model import GPT",
            f'model = GPT.from_pretrained("{name}")',
            "```",
            "",
            f"or `python sample.py --init_from={name}` (streams past block_size, carrying the memory), or fine-tune "
            f"with `python train.py --init_from={name} ...`. meta.json holds the tokenizer the project reads.",
        ]
    settings = "\n".join(f"| {f.name} | {getattr(cfg, f.name)} |" for f in fields(cfg))
    versions = ckpt.get("versions", {})
    return "\n".join(
        [
            "---",
            *header,
            "---",
            "",
            f"# {repo or Path(name).name}",
            "",
            f"A GPT of {n_params / 1e6:.2f}M parameters ({cfg.n_layer} layers, {cfg.n_head} heads, width "
            f"{cfg.n_embd}, {cfg.block_size}-token segments) with {memory}, trained with the gated-memory-mixture "
            "project's train.py.",
            "",
            "## Data and tokenizer",
            "",
            f"Dataset `{run.get('dataset', 'unknown')}`, tokenizer `{meta['tokenizer']}` ({meta['vocab_size']} ids; "
            f"the model's vocabulary is {cfg.vocab_size}), {run.get('n_segments', 1)} segment(s) per training "
            "sequence.",
            "",
            "## Results",
            "",
            *results_table(records),
            "",
            "## How it was trained",
            "",
            "```bash",
            training_command(ckpt),
            "```",
            "",
            f"Trained at the project's commit `{versions.get('commit', 'unknown')}` (torch "
            f"{versions.get('torch', '?')}); exported at commit `{git_commit()}`, at iteration "
            f"{ckpt.get('iter_num', '?')}.",
            "",
            "| setting | value |",
            "|---|---|",
            settings,
            "",
            "## How to load",
            "",
            *load,
            "",
        ]
    )


# --- the export -----------------------------------------------------------------------------------------------------


def export_kind(config: GPTConfig, format: str) -> str:
    """'gpt2' (a transformers GPT2LMHeadModel) or 'gmm' (the project's format) for a model and the asked format;
    ValueError when transformers' GPT-2 cannot hold the model."""
    why = []
    if config.gmm_experts > 0:
        why.append(f"its memory (gmm_experts = {config.gmm_experts})")
    if config.pos_emb != "learned":
        why.append(f"its positions (pos_emb = '{config.pos_emb}'; GPT-2 has learned position embeddings only)")
    if config.token_shift:
        why.append("its token shift (token_shift = True; GPT-2 has none)")
    if format == "transformers" and why:
        raise ValueError(
            f"format = 'transformers': transformers' GPT-2 cannot hold {' and '.join(why)}; export with "
            "--format=project (or auto), which GPT.from_pretrained and sample.py load"
        )
    if format == "project" or why:
        return "gmm"
    return "gpt2"


def check_folder(folder: Path) -> None:
    """Only the formats an export may hold: safetensors, JSON and text."""
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix not in ALLOWED_SUFFIXES:
            raise ValueError(f"{path.name} would be exported: only {', '.join(ALLOWED_SUFFIXES)} files may be")


def export(cfg: ExportConfig) -> Path:
    """Write the export folder (in a temporary folder beside it, renamed into place when complete)."""
    if not cfg.to:
        raise ValueError("to = '' must name the export folder, e.g. --to=exports/my-model")
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    target = Path(cfg.to)
    if target.exists() and not cfg.overwrite:
        raise ValueError(f"to = '{cfg.to}' exists: choose another folder, or pass --overwrite=True to replace it")
    if target.exists() and not target.is_dir():
        raise ValueError(f"to = '{cfg.to}' is a file: give a folder")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr is for errors
    ckpt = load_checkpoint(ckpt_path)
    model = GPT.from_checkpoint(ckpt, {"dropout": 0.0}, ckpt_path)
    model.eval()
    meta = ckpt.get("tokenizer_meta") or {"tokenizer": "gpt2", "vocab_size": 50257}
    kind = export_kind(model.config, cfg.format)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if kind == "gpt2":
            to_transformers(model).save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp)
        save_tokenizer(meta, tmp, model.config.block_size)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        card = model_card(model, ckpt, read_metrics(cfg.out_dir), kind, cfg.push_to_hub)
        (tmp / "README.md").write_text(card)
        check_folder(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"exported {ckpt_path} ({'transformers GPT-2' if kind == 'gpt2' else 'project format'}) to {target}")
    return target


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload the folder to the Hub repo (made if missing); the URL of the commit."""
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="export.py")
    except Exception as e:  # offline, no token, no access: the library's words on one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"push_to_hub = '{repo_id}' failed ({type(e).__name__}: {first}); the export is complete in {folder}: "
            f"push it later with `hf upload {repo_id} {folder}`"
        ) from None
    return str(getattr(info, "commit_url", info))


def main(argv: list[str]) -> None:
    try:
        (cfg,) = configure(argv, ExportConfig())
    except ConfigError as e:
        fail(str(e))
    from dotenv import load_dotenv

    load_dotenv()  # HF_TOKEN may live in a .env file; variables already set win
    try:
        folder = export(cfg)
        if cfg.push_to_hub:
            print(f"pushed to {push(folder, cfg.push_to_hub, cfg.private)}")
    except ValueError as e:
        fail(str(e))


if __name__ == "__main__":
    main(sys.argv[1:])
