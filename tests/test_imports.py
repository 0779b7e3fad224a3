"""The house's shape: nothing imports in a circle, and no library module imports a script.

The graph is read from the source (every `import` and `from ... import`, those inside functions too, since a lazy
import is still a dependency), over the modules at the root and in data/.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "train",
    "sample",
    "bench",
    "benchmark",
    "analyze",
    "dashboard",
    "export",
    "gpu_check",
}  # what `uv run X.py` starts


def project_modules() -> dict[str, Path]:
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    modules.update({f"data.{p.stem}": p for p in (ROOT / "data").glob("*.py") if p.stem != "__init__"})
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            deps |= {n for n in names if n in modules and n != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first search, as the cycle it closes."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append([*stack[stack.index(v) :], v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def test_the_graph_sees_lazy_imports_and_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "model" in graph["train"] and "gmm" in graph["model"] and "data.loader" in graph["evaluate"]


def test_nothing_imports_in_a_circle() -> None:
    assert cycles(import_graph()) == []


def test_no_library_imports_a_script() -> None:
    graph = import_graph()
    wrong = {m: sorted(deps & SCRIPTS) for m, deps in graph.items() if m not in SCRIPTS and deps & SCRIPTS}
    assert wrong == {}


# what only some runs need: sharding (torch.distributed's fsdp, tensor and checkpoint packages, about a second), the
# trackers, transformers (GPT-2 weights and exports), huggingface_hub (Hub downloads and uploads, ~0.4 s)
OPTIONAL = (
    "torch.distributed.fsdp", "torch.distributed.checkpoint", "trackio", "wandb", "transformers", "huggingface_hub"
)  # fmt: skip


def test_a_plain_run_imports_nothing_only_some_runs_need() -> None:
    """Importing train.py (what every run does first) leaves the optional packages unimported; shard() imports
    fsdp when a run asks for it."""
    code = (
        "import sys, train\n"
        f"print(' '.join(m for m in {OPTIONAL!r} if m in sys.modules))\n"
        "import parallel, model\n"
        "m = model.GPT(model.GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=16))\n"
        "print(parallel.sharded(m), 'torch.distributed.fsdp' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    first, second = out.stdout.splitlines()
    assert first == "", f"import train imported {first}"
    assert second == "False False"
