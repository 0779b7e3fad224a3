"""
The memory benchmark's records read back: what benchmark.py's runs measured, as tables, paired tests and plots.

$ python benchmark.py --out_dir=results/a ...             # trains, then calls write_outputs(results/a)
$ python benchmark.py --compare=results/a,results/b:k1   # compare_recipes: nothing trains

A record is one run's JSON (<task>_<variant>_seed<S>.json: its settings, accuracy or loss at each segment count, its
learning curve); benchmark.py writes them, this module only reads them. From a folder's records it writes table.md
(mean ± sample std over seeds; each memory variant against one bank, and against the one bank that reads as many
slots, paired by seed with a t-test and an exact sign-flip test; text: each variant against no memory and the gap to
full attention it closes), summary.json and the plots (accuracy against segments and against episodes seen, pairs
stored by ARMT's estimator, text loss per segment and position). Across folders it writes recipes.md and
recipes.png. The task names (recall, copy, needle, mqar<P>, spread, rewrite<K>, else a text task) are read here too,
since every table depends on them.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from typing import Any

import numpy as np

from data.common import check_writable_dir

SYNTHETIC = ("recall", "copy", "needle")  # and mqar<P>: multi-query associative recall with P pairs
LEARNED = 0.9  # answer accuracy at the trained length from which a run counts as having learned its task
# what a drawn-questions task can be scored on (records' settings["scored"]), and what each counts; acc_open is the
# grid's: once the other keys were answered, a first-asked key's value can follow by elimination
SCORED = {"acc_first": ("first-asked keys", "a key asked again has its answer in context"),
          "acc_open": ("opening questions", "each episode's first: no answer before it can inform it")}  # fmt: skip
NUM = r"\d+(?:\.\d+)?"  # a number in a variant name: 2, 0.5, 0.003 ('-' joins ablations, so none is negative)
WHOLE_MODEL = ("rope", "warmup", "shift")  # flags that apply without memory too (off-rope, full-rope), as lr<x> does


# -----------------------------------------------------------------------------
# task names: what a grid's task asks


def mqar_pairs(task: str) -> int | None:
    """P for a multi-query associative recall task named mqar<P>, else None."""
    match = re.fullmatch(r"mqar([1-9]\d*)", task)
    return int(match.group(1)) if match else None


def spread_keys(task: str) -> int | None:
    """For the spread tasks (data/spread): 0 for spread (one new key a segment, all asked), K for rewrite<K> (K keys
    written again and again, the latest value asked); None for other tasks."""
    if task == "spread":
        return 0
    match = re.fullmatch(r"rewrite([1-9]\d*)", task)
    return int(match.group(1)) if match else None


def is_synthetic(task: str) -> bool:
    return task in SYNTHETIC or mqar_pairs(task) is not None or spread_keys(task) is not None


def task_order(task: str) -> tuple[int, int, str]:
    """recall, copy, needle, mqar by P, spread, rewrite by K, then text."""
    if not is_synthetic(task):
        return (3, 0, task)
    if (K := spread_keys(task)) is not None:
        return (2, K, task)
    P = mqar_pairs(task)
    return (1, P, task) if P is not None else (0, SYNTHETIC.index(task), task)


def pairs_asked(task: str, n_segments: int) -> int | None:
    """How many key-value pairs an episode of the task asks for (what stored_pairs counts against): mqar<P> P,
    spread one a segment but the last, rewrite<K> K; None for tasks without pairs."""
    if (P := mqar_pairs(task)) is not None:
        return P
    K = spread_keys(task)
    return None if K is None else (K or max(1, n_segments - 1))


# -----------------------------------------------------------------------------
# records: one JSON a run, written by benchmark.py


def read_record(path: str) -> dict[str, Any] | None:
    """A run's record, or None if there is none (or only an unreadable one, which is run again)."""
    try:
        with open(path) as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return None


def read_records(out_dir: str) -> list[dict[str, Any]]:
    """Every whole run record in out_dir (<task>_<variant>_seed<S>.json), in name order."""
    records = []
    for name in sorted(os.listdir(out_dir)):
        if re.fullmatch(r".+_seed-?\d+\.json", name) and (rec := read_record(os.path.join(out_dir, name))):
            records.append(rec)
    return records


# -----------------------------------------------------------------------------
# a folder's records summarised over seeds


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def variant_order(variant: str) -> tuple[int, int, str]:
    """off first, then k1..k8 (each before its ablations), then xl and full."""
    head = variant.split("-")[0]
    if head in ("off", "xl", "full"):
        return ({"off": 0, "xl": 2, "full": 3}[head], 0, variant)
    return (1, int(head[1:]), variant)


def run_settings(rec: dict[str, Any]) -> dict[str, str]:
    """A record's train.py --key=value settings, as strings."""
    return dict(a[2:].split("=", 1) for a in rec["settings"]["argv"] if a.startswith("--"))


def learned_at(rec: dict[str, Any]) -> int | None:
    """The first iteration whose evaluation (at the trained length) reached LEARNED accuracy, or None: answer
    accuracy, or per answer token on tasks whose answers have several tokens (mqar's P values, copy's string)."""
    key = curve_key(rec)
    return next((e["iter"] for e in rec.get("curve", []) if e.get(key, 0.0) >= LEARNED), None)


def curve_key(rec: dict[str, Any]) -> str:
    """The accuracy a synthetic run's curve is read by: per answer token where answers have several tokens (and
    the curve records it; on opening questions, or first-asked keys, where the run is scored so), else per answer."""
    several = (rec.get("chance_exact") or rec["chance"]) < rec["chance"]
    curve = rec.get("curve", [])
    scored = rec["settings"].get("scored")
    if several and scored in SCORED and any(f"val_{scored}" in e for e in curve):
        return f"val_{scored}"
    has_token = any("val_acc_token" in e for e in curve)
    return "val_acc_token" if several and has_token else "val_acc_answer"


def learning_curve(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Accuracy at the trained length against training episodes seen (iterations x batch x accumulation), mean and
    std over the runs, at the evaluations every run made: per answer token where answers have several, else per
    answer (as learned_at reads it)."""
    keys = {curve_key(r) for r in runs}
    key = keys.pop() if len(keys) == 1 else "val_acc_token"  # older records beside newer: what they all have
    curves = [{e["iter"]: e[key] for e in r.get("curve", []) if key in e} for r in runs]
    iters = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    settings = run_settings(runs[0])
    per_iter = int(settings.get("batch_size", 1)) * int(settings.get("gradient_accumulation_steps", 1))
    stats = [mean_std([c[it] for c in curves]) for it in iters]
    return {"episodes": [it * per_iter for it in iters], "mean": [m for m, _ in stats], "std": [s for _, s in stats]}


def accuracy_stats(runs: list[dict[str, Any]], n: str, key: str) -> dict[str, Any]:
    """Mean, sample std, min, max and the values over runs of one accuracy at segment count n."""
    accs = [r["eval"][n][key] for r in runs]
    mean, std = mean_std(accs)
    return {"mean": mean, "std": std, "min": min(accs), "max": max(accs), "values": accs}


def stored_pairs(n_pairs: int, n_values: int, accuracy: float) -> float:
    """How many of n_pairs key-value pairs a model holds, from its accuracy per value over n_values possible values
    (ARMT's estimator, arXiv 2407.04841): if s pairs are stored and the others guessed at random, accuracy is
    (s + (n - s) / v) / n, so s = n (v a - 1) / (v - 1): 0 at chance, n when every value is right."""
    return n_pairs * (n_values * accuracy - 1) / (n_values - 1)


def multi_token(cells: dict[str, Any]) -> bool:
    """Whether a task's answers have several tokens (copy): then per-token accuracy says more than exact match."""
    first = next(iter(cells.values()))
    return first["chance_exact"] < first["chance"] and all("acc_token" in c for c in cells.values())


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and variant: per segment count, mean/std/min/max of answer accuracy (synthetic) or of the loss per
    segment (text), over the seeds that finished."""
    out: dict[str, Any] = {}
    done = [r for r in records if "error" not in r]
    for task in sorted({r["task"] for r in done}, key=task_order):
        out[task] = {}
        for variant in sorted({r["variant"] for r in done if r["task"] == task}, key=variant_order):
            runs = sorted((r for r in done if (r["task"], r["variant"]) == (task, variant)), key=lambda r: r["seed"])
            cell: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "params": runs[0]["params"],
                                    "train_seconds": mean_std([r["train_seconds"] for r in runs])[0],
                                    "setup": run_settings(runs[0]), "data": runs[0].get("data", {})}  # fmt: skip
            if not is_synthetic(task):
                (n,) = runs[0]["eval"]
                per_seg = np.array([r["eval"][n]["seg_loss"] for r in runs])  # (seeds, S)
                cell["seg_loss"] = [mean_std(list(col)) for col in per_seg.T]
                cell["loss"] = mean_std([r["eval"][n]["loss"] for r in runs])
                later = per_seg[:, 1:].mean(axis=1)  # segments 2..S: where memory can help
                cell["later_loss"] = mean_std(list(later))
                cell["later_by_seed"] = by_seed(runs, later)
                cell["first_by_seed"] = by_seed(runs, per_seg[:, 0])
                if all("pos_loss" in r["eval"][n] for r in runs):
                    pos = np.array([r["eval"][n]["pos_loss"] for r in runs])  # (seeds, L)
                    cell["pos_loss"] = pos.mean(axis=0).round(4).tolist()
                    starts, rest = segment_starts(pos, per_seg.shape[1])
                    cell["start_loss"], cell["rest_loss"] = mean_std(list(starts)), mean_std(list(rest))
                    cell["start_by_seed"], cell["rest_by_seed"] = by_seed(runs, starts), by_seed(runs, rest)
                cell["iters"] = runs[0].get("iters")
                if all("tokens_seen" in r for r in runs):  # over the run's wall time, evaluations and start-up included
                    cell["tokens_per_s"] = float(np.median([r["tokens_seen"] / r["train_seconds"] for r in runs]))
            else:
                cell["chance"] = runs[0]["chance"]
                cell["chance_exact"] = runs[0].get("chance_exact") or runs[0]["chance"]
                cell["learned_at"] = [learned_at(r) for r in runs]  # per seed: first iteration at >= LEARNED
                cell["curve"] = learning_curve(runs)
                counts = evaluated_everywhere(runs)  # a seed evaluated at fewer lengths (an older record) limits it
                cell["acc"] = {n: accuracy_stats(runs, n, "acc_answer") for n in counts}
                for key in ("acc_token", *SCORED):
                    if all(key in r["eval"][n] for r in runs for n in counts):
                        cell[key] = {n: accuracy_stats(runs, n, key) for n in counts}
            out[task][variant] = cell
    return out


def evaluated_everywhere(runs: list[dict[str, Any]]) -> list[str]:
    """The segment counts at which every one of the runs was evaluated, in increasing order."""
    common = set.intersection(*(set(r["eval"]) for r in runs))
    return sorted(common, key=int)


def columns_of(cells: dict[str, Any], key: str) -> list[str]:
    """The segment counts any cell has for key (acc, acc_token), in increasing order: a table's columns."""
    return sorted({n for cell in cells.values() for n in cell.get(key, {})}, key=int)


def by_seed(runs: list[dict[str, Any]], values: np.ndarray) -> dict[str, float]:
    """{seed: value} for one value per run, in the runs' order (what paired comparisons match on)."""
    return {str(r["seed"]): float(v) for r, v in zip(runs, values, strict=True)}


def segment_starts(pos_loss: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (runs, L) losses per position, over segments 2..S: the mean of each segment's first eighth of
    positions, which see the fewest tokens of their own segment (where carried context should help most), and the
    mean of the rest of their positions."""
    T = pos_loss.shape[1] // S
    head = max(1, T // 8)
    starts = np.concatenate([pos_loss[:, s * T : s * T + head] for s in range(1, S)], axis=1)
    rest = np.concatenate([pos_loss[:, s * T + head : (s + 1) * T] for s in range(1, S)], axis=1)
    return starts.mean(axis=1), (rest.mean(axis=1) if rest.size else starts.mean(axis=1))


# -----------------------------------------------------------------------------
# a folder's table.md: accuracy, pairs stored, paired tests


def format_tables(summary: dict[str, Any]) -> str:
    lines: list[str] = []
    for task, cells in summary.items():
        if not is_synthetic(task):
            lines += text_table(task, cells)
            continue
        first = next(iter(cells.values()))
        counts, setup = columns_of(cells, "acc"), first["setup"]
        seeds = sorted({seed for cell in cells.values() for seed in cell["seeds"]})  # every variant's, not the first's
        trained = (
            f"trained on {setup['n_segments']} segments of {setup['block_size']} tokens (curriculum "
            f"{setup['segment_curriculum']}), {setup['max_iters']} iterations; seeds {seeds}"
        )
        columns = "| variant | params | " + " | ".join(f"{n} seg" for n in counts) + " |"
        lines += [
            f"### {task}: answer accuracy, every answer token right (mean ± std over seeds; best seed in brackets), "
            f"chance {first['chance_exact']:.3g}",
            "",
            trained,
            "",
            f"{columns} learned (≥ {LEARNED}) |",
            "|---|---|" + "---|" * (len(counts) + 1),
        ]
        for variant, cell in cells.items():
            hits = [it for it in cell["learned_at"] if it is not None]
            median = f", median step {np.median(hits):.0f}" if hits else ""
            row = accuracy_row(variant, cell, "acc", counts)
            lines.append(row + f" {len(hits)}/{len(cell['learned_at'])}{median} |")
        lines += [
            "",
            f"learned: seeds whose evaluation at the trained length reached {LEARNED} accuracy (per answer token "
            "where answers have several) during training, and the median first step it did (evaluations every "
            "eval_interval steps)",
            "",
        ]
        if multi_token(cells):
            lines += accuracy_table(f"{task}: answer-token accuracy", cells, "acc_token", counts, trained)
        if pairs_asked(task, 1) is not None and capacity_cells(cells):
            lines += capacity_table(task, round(1 / first["chance"]), cells, trained)
    return "\n".join(lines)


def capacity_key(cells: dict[str, Any]) -> str:
    """The per-value accuracy a task's pairs stored are counted from: acc_open (each episode's opening question)
    where every cell has it, else acc_first (first-asked keys), else acc_token (every answer; the same where no key
    is asked twice)."""
    return next((k for k in ("acc_open", "acc_first") if all(k in c for c in cells.values())), "acc_token")


def capacity_table(task: str, n_values: int, cells: dict[str, Any], trained: str) -> list[str]:
    """mqar, spread, rewrite: the pairs each variant stores (stored_pairs of each seed's per-value accuracy on
    first-asked keys where the records have it), mean ± std over seeds and the best seed, at every evaluated segment
    count, of the pairs asked there."""
    key = capacity_key(cells)
    counts = columns_of(cells, key)
    asked = {n: pairs_asked(task, int(n)) or 0 for n in counts}
    rows = []
    for variant, cell in cells.items():
        stored = stored_by_length(task, cell, n_values, key)
        row = [pairs_cell(stored[n]) if n in stored else "-" for n in counts]
        rows.append(f"| {variant} | " + " | ".join(row) + " |")
    first = []
    if key in SCORED:
        label, why = SCORED[key]
        first = accuracy_table(f"{task}: per-value accuracy on {label} ({why})", cells, key, counts, trained)
    source = SCORED[key][0] if key in SCORED else "every answer"
    title = (f"{task}: pairs stored (ARMT's estimator from the per-value accuracy on {source}, {n_values} values; "
             "mean ± std over seeds, best seed in brackets)")  # fmt: skip
    columns = ["variant", *(f"{n} seg, of {asked[n]}" for n in counts)]
    return [
        *first,
        *table_section(title, trained, columns, rows),
        *paired_capacity_table(task, asked, n_values, cells, trained, key),
    ]


def pairs_cell(stored: list[float]) -> str:
    """Pairs stored over seeds as a table shows them: mean ± std (best seed)."""
    mean, std = mean_std(stored)
    return f"{mean:.2f} ± {std:.2f} ({max(stored):.2f})"


def stored_by_length(task: str, cell: dict[str, Any], n_values: int, key: str) -> dict[str, list[float]]:
    """{segment count: the pairs each seed stores there} of one variant (stored_pairs of its per-value accuracy key,
    capacity_key's for every cell of a task, against the pairs the task asks at that length)."""
    return {
        n: [stored_pairs(pairs_asked(task, int(n)) or 0, n_values, a) for a in acc["values"]]
        for n, acc in cell[key].items()
    }


def one_bank(variant: str, cells: dict[str, Any]) -> str | None:
    """The one-bank variant a memory variant's capacity is compared with: k1 with the same flags that apply to the
    whole model (rope, warmup, shift, lr<x>); None for that variant itself, for off, xl and full, and where the grid
    has none."""
    head, *mods = variant.split("-")
    if head in ("off", "xl", "full"):
        return None
    wanted = [m for m in mods if m in WHOLE_MODEL or re.fullmatch(rf"lr{NUM}", m)]
    same = "-".join(["k1", *wanted])
    return same if same in cells and same != variant else None


def read_slots(cell: dict[str, Any]) -> int:
    """The memory slots a variant's text reads (from its settings): a bank's slots, all k banks' under concat."""
    setup = cell["setup"]
    slots = int(setup["gmm_slots"])  # every synthetic run names it (benchmark.train_args)
    return slots * int(setup.get("gmm_experts", 1)) if setup.get("gmm_read") == "concat" else slots


def same_read_slots_bank(variant: str, cells: dict[str, Any]) -> str | None:
    """For a variant that reads more slots than its one bank (concat: k banks of M), the one-bank variant with the
    same whole-model flags reading as many (k1-slots<kM>), where the grid has it; else None."""
    base = one_bank(variant, cells)
    if base is None or read_slots(cells[variant]) == read_slots(cells[base]):
        return None
    wanted = sorted(base.split("-")[1:])
    for name, cell in cells.items():
        head, *mods = name.split("-")
        kept = sorted(m for m in mods if not re.fullmatch(r"slots\d+", m))
        if head == "k1" and name != variant and kept == wanted and read_slots(cell) == read_slots(cells[variant]):
            return name
    return None


def paired_capacity_table(
    task: str, asked: dict[str, int], n_values: int, cells: dict[str, Any], trained: str, key: str
) -> list[str]:
    """Each memory variant's stored pairs minus its one bank's (one_bank), and minus the one bank that reads as many
    slots where that differs (same_read_slots_bank), seed by seed (the same batches in the same order), at every
    segment count: mean ± std, the seeds above, and two-sided p-values of a paired t-test and of an exact sign-flip
    test (which needs no normality, and cannot go below 2 / 2^seeds)."""
    rows = []
    pairs = [(v, b) for v in cells for b in (one_bank(v, cells), same_read_slots_bank(v, cells)) if b is not None]
    for variant, base in pairs:
        cell = cells[variant]
        row = [variant, base]
        for n in asked:
            if n not in cell[key] or n not in cells[base][key]:
                row.append("-")
                continue
            diffs = seed_diffs(*(by_seed_values(task, c, n, n_values, key) for c in (cell, cells[base])))
            row.append(paired_pairs_cell(diffs))
        rows.append("| " + " | ".join(row) + " |")
    if not rows:
        return []
    return [
        f"### {task}: pairs stored against one bank, paired by seed (variant minus one bank, k1 with M slots, and "
        "minus the one bank reading as many slots where the variant reads more; positive: holds more)",
        "",
        trained,
        "",
        "| variant | one bank | " + " | ".join(f"{n} seg, of {k}" for n, k in asked.items()) + " |",
        "|---|---|" + "---|" * len(asked),
        *rows,
        "",
        "each cell: mean ± std of the differences over the seeds both have, [seeds where the variant holds more / "
        "seeds], then two-sided p of a paired t-test / of an exact sign-flip test (no normality assumed; its "
        "smallest possible value is 2 / 2^seeds, 0.0625 at 5 seeds)",
        "",
    ]


def paired_pairs_cell(diffs: list[float]) -> str:
    """'+0.61 ± 0.51 [5/5], p 0.056 / 0.062': the differences in pairs stored, mean ± std, the seeds above, and the
    two-sided p of a paired t-test / of an exact sign-flip test; '+1.50 [1/1] (one seed)' for a single seed, which
    has neither; '-' for none."""
    if not diffs:
        return "-"
    mean, std = mean_std(diffs)
    above = f"[{sum(d > 0 for d in diffs)}/{len(diffs)}]"
    if len(diffs) == 1:  # no spread and no test
        return f"{mean:+.2f} {above} (one seed)"
    return f"{mean:+.2f} ± {std:.2f} {above}, p {paired_t_p(diffs):.2g} / {sign_flip_p(diffs):.2g}"


def by_seed_values(task: str, cell: dict[str, Any], n: str, n_values: int, key: str) -> dict[str, float]:
    """{seed: pairs stored} of one cell at segment count n (keyed as by_seed keys), from per-value accuracy key."""
    return dict(zip(map(str, cell["seeds"]), stored_by_length(task, cell, n_values, key)[n], strict=True))


def seed_diffs(mine: dict[str, float], theirs: dict[str, float]) -> list[float]:
    """mine minus theirs, seed by seed, over the seeds both have (what every paired comparison here rests on)."""
    return [mine[s] - theirs[s] for s in mine if s in theirs]


def paired_t_p(diffs: list[float]) -> float:
    """Two-sided p-value of a paired t-test of mean(diffs) = 0, from Student's t with n - 1 degrees of freedom
    (the closed forms of Abramowitz & Stegun 26.7.3-4 for integer degrees); 1.0 for fewer than 2 values or no
    spread unless every difference is the same non-zero value (then 0.0)."""
    n = len(diffs)
    mean, std = mean_std(diffs)
    if n < 2 or std == 0:
        return 0.0 if n >= 2 and mean != 0 else 1.0
    t, df = abs(mean) / (std / math.sqrt(n)), n - 1
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: A = 2/pi (theta + sin cos (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...)), terms up to c^(df-3)
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:  # even: A = sin (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...), terms up to c^(df-2)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = math.sin(theta) * total
    return max(0.0, 1.0 - inside)


def sign_flip_p(diffs: list[float]) -> float:
    """Two-sided p-value of an exact paired sign-flip (permutation) test: the share of the 2^n sign patterns whose
    mean is at least as far from 0 as the observed one."""
    a = np.asarray(diffs, dtype=np.float64)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(a))))
    observed = abs(a.mean())
    return float(np.mean(np.abs((signs * a).mean(axis=1)) >= observed - 1e-12))


def accuracy_table(title: str, cells: dict[str, Any], key: str, counts: list[str], trained: str) -> list[str]:
    """A table of one accuracy of a synthetic task's cells, a row per variant and a column per segment count."""
    chance = next(iter(cells.values()))["chance"]
    return table_section(
        f"{title} (mean ± std over seeds; best seed in brackets), chance {chance:.4f}",
        trained,
        ["variant", "params", *(f"{n} seg" for n in counts)],
        [accuracy_row(variant, cell, key, counts) for variant, cell in cells.items()],
    )


def table_section(title: str, trained: str, columns: list[str], rows: list[str]) -> list[str]:
    """A table.md section: its '### title', the line saying how the runs were trained, then the table."""
    return ["### " + title, "", trained, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows, ""]


def accuracy_row(variant: str, cell: dict[str, Any], key: str, counts: list[str]) -> str:
    """'| variant | params | mean ± std (best) | ... |' for one accuracy of a synthetic task's cell."""
    row = [f"{a['mean']:.3f} ± {a['std']:.3f} ({a['max']:.2f})" if (a := cell[key].get(n)) else "-" for n in counts]
    return f"| {variant} | {cell['params'] / 1e6:.3f}M | " + " | ".join(row) + " |"


def text_table(task: str, cells: dict[str, Any]) -> list[str]:
    """Two tables: the loss per segment of every variant; then each variant against no memory with the same
    positions (off, or off-rope for a rope variant and xl), paired by seed, and the share it closes of the gap
    between that no-memory model and its best full-attention model (the bound)."""
    S = len(next(iter(cells.values()))["seg_loss"])
    lines = [f"### {task}: val loss per segment (mean ± std over seeds)", "",
             "| variant | params | " + " | ".join(f"seg {i + 1}" for i in range(S)) + " | segs 2-S | starts 2-S "
             "| rest 2-S | tokens/s |", "|---|---|" + "---|" * (S + 4)]  # fmt: skip
    for variant, cell in cells.items():
        segs = [f"{m:.3f} ± {s:.3f}" for m, s in cell["seg_loss"]]
        speed = f"{cell['tokens_per_s']:,.0f}" if "tokens_per_s" in cell else "-"
        parts = [pm(cell.get(k)) for k in ("later_loss", "start_loss", "rest_loss")]
        lines.append(f"| {variant} | {cell['params'] / 1e6:.2f}M | " + " | ".join([*segs, *parts, speed]) + " |")
    seeds = sorted({seed for cell in cells.values() for seed in cell["seeds"]})
    iters = sorted({cell["iters"] for cell in cells.values() if cell.get("iters")})
    lines += ["", f"seeds {seeds} (a cell with ± 0.000 has one); iterations {iters}. starts 2-S: the loss on the "
              "first eighth of each of segments 2-S, which sees least of its own segment; rest 2-S: the other "
              "seven eighths. tokens/s: training tokens over the run's wall time (evaluations included, the grid's "
              "runs sharing the machine), median over seeds", ""]  # fmt: skip
    return lines + paired_table(task, cells)


def paired_table(task: str, cells: dict[str, Any]) -> list[str]:
    """Each variant minus its no-memory baseline, seed by seed (the same batches in the same order): mean ± std of
    the differences, and how many seeds are below; the gap closed on segments 2-S and on their starts."""
    rows = []
    for variant, cell in cells.items():
        base = baseline(variant, cells)
        if base is None:
            continue
        bound = upper_bound(variant, cells)
        row = [variant, base]
        for key in ("first_by_seed", "later_by_seed", "start_by_seed", "rest_by_seed"):
            row.append(paired_difference(cell, cells[base], key))
        row += [
            gap_closed(cell, cells[base], cells[bound] if bound else None, k)
            for k in ("later_by_seed", "start_by_seed")
        ]
        rows.append("| " + " | ".join(row) + " |")
    if not rows:
        return []
    return [
        f"### {task}: against no memory, paired by seed (variant minus baseline; negative is better)",
        "",
        "| variant | baseline | seg 1 | segs 2-S | starts 2-S | rest 2-S | gap closed, segs 2-S | gap closed, starts |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "each difference: mean ± std over the seeds both have, then [seeds below the baseline / seeds]. baseline: "
        "no memory with the same positions. gap closed: (baseline - variant) / (baseline - bound), the bound being "
        "the best full-attention variant with the same positions; '-' where there is none or it is no better than "
        "the baseline",
        "",
    ]


def positions(variant: str) -> str:
    """A variant's position embeddings: 'rope' (the rope flag, and xl, which always has it) or 'learned'."""
    parts = variant.split("-")
    return "rope" if "rope" in parts or parts[0] == "xl" else "learned"


def baseline(variant: str, cells: dict[str, Any]) -> str | None:
    """The no-memory variant a variant is compared with: the 'off' one with the same flags that off takes (rope,
    warmup: the same batches, lr<x>) if the grid has it, else the plainest (fewest flags) with the same positions;
    None for that variant itself and where there is none."""
    offs = [v for v in cells if v.split("-")[0] == "off" and positions(v) == positions(variant)]
    wanted = {m for m in variant.split("-")[1:] if m in WHOLE_MODEL or re.fullmatch(rf"lr{NUM}", m)}
    wanted |= {"rope"} if positions(variant) == "rope" else set()  # xl has rope without the flag
    same = [v for v in offs if set(v.split("-")[1:]) == wanted]
    best = same[0] if same else min(offs, key=lambda v: len(v.split("-")), default=None)
    return None if best == variant else best


def upper_bound(variant: str, cells: dict[str, Any]) -> str | None:
    """The full-attention variant with the same positions and the lowest loss on segments 2-S, or None."""
    fulls = [v for v in cells if v.split("-")[0] == "full" and positions(v) == positions(variant)]
    return min(fulls, key=lambda v: cells[v]["later_loss"][0], default=None)


def paired_difference(cell: dict[str, Any], base: dict[str, Any], key: str) -> str:
    """'+0.012 ± 0.004 [1/5]': the mean ± std over shared seeds of cell minus base (key: a value per seed), and the
    seeds where cell is below; '-' if either lacks it."""
    if key not in cell or key not in base:
        return "-"
    diffs = seed_diffs(cell[key], base[key])
    if not diffs:
        return "-"
    mean, std = mean_std(diffs)
    return f"{mean:+.3f} ± {std:.3f} [{sum(d < 0 for d in diffs)}/{len(diffs)}]"


def gap_closed(cell: dict[str, Any], base: dict[str, Any], bound: dict[str, Any] | None, key: str) -> str:
    """The share of the baseline -> bound difference that cell closes (key: a value per seed; each difference is
    the mean over the seeds its two sides share), or '-'."""
    if bound is None or key not in cell or key not in base or key not in bound:
        return "-"

    def gain(other: dict[str, Any]) -> float:
        seeds = [s for s in other[key] if s in base[key]]
        return float(np.mean([base[key][s] - other[key][s] for s in seeds])) if seeds else float("nan")

    gap = gain(bound)
    return f"{100 * gain(cell) / gap:.0f}%" if gap > 0 else "-"


def pm(stat: Any) -> str:
    """'mean ± std' of a (mean, std) pair, '-' for None."""
    return "-" if stat is None else f"{stat[0]:.3f} ± {stat[1]:.3f}"


# -----------------------------------------------------------------------------
# a folder's plots


def plot(summary: dict[str, Any], out_dir: str) -> list[str]:
    """accuracy_vs_segments.png (one panel per synthetic task) and <task>_loss.png per text task; returns the paths."""
    synthetic = {t: c for t, c in summary.items() if is_synthetic(t) and c}
    paths = [plot_synthetic(synthetic, out_dir), plot_learning(synthetic, out_dir)] if synthetic else []
    with_pairs = {t: c for t, c in synthetic.items() if pairs_asked(t, 1) is not None and capacity_cells(c)}
    if with_pairs:
        paths.append(plot_capacity(with_pairs, out_dir))
    text = {task: cells for task, cells in summary.items() if not is_synthetic(task) and cells}
    return paths + [plot_text(task, cells, out_dir) for task, cells in text.items()]


def capacity_cells(cells: dict[str, Any]) -> bool:
    """Whether a task's cells have the per-value accuracy the pairs stored are counted from."""
    return all("acc_token" in c for c in cells.values())


def variant_colors(variants: set[str]) -> dict[str, Any]:
    """One colour per variant, the same in every panel of a figure."""
    import matplotlib

    ordered = sorted(variants, key=variant_order)
    cmap = matplotlib.colormaps["tab20" if len(ordered) > 10 else "tab10"]  # an int picks the cmap's i-th colour
    return {v: cmap(i % cmap.N) for i, v in enumerate(ordered)}


def draw_seeds(ax: Any, by_x: dict[int, list[float]], color: Any, label: str, clip: tuple[float, float]) -> None:
    """A variant's line over x: the mean over seeds, a band of +- one std (clipped to what the measure can be), and
    every seed faint."""
    x = sorted(by_x)
    mean, std = (np.array(m) for m in zip(*(mean_std(by_x[n]) for n in x), strict=True))
    ax.plot(x, mean, marker="o", label=label, color=color)
    ax.fill_between(x, np.clip(mean - std, *clip), np.clip(mean + std, *clip), color=color, alpha=0.15)
    for n in x:
        ax.scatter([n] * len(by_x[n]), by_x[n], color=color, alpha=0.3, s=10)


def finish_panels(fig: Any, axes: Any, name: str, out_dir: str) -> str:
    """One legend for all the panels, right of the last, and the figure saved as out_dir/name."""
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    axes[0][-1].legend(list(handles.values()), list(handles), fontsize=8, loc="center left",
                       bbox_to_anchor=(1.02, 0.5))  # fmt: skip
    return save_figure(fig, out_dir, name)


def save_figure(fig: Any, out_dir: str, name: str) -> str:
    """Lay the figure out tight and save it as out_dir/name (120 dpi); returns the path."""
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=120)
    return path


def plot_capacity(with_pairs: dict[str, Any], out_dir: str) -> str:
    """pairs_stored.png: the pairs each variant stores (ARMT's estimator) against segment count, one panel per task
    with pairs, mean +- std over seeds and every seed faint, beside the pairs the task asks there."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(with_pairs), 4))
    axes = fig.subplots(1, len(with_pairs), squeeze=False)
    colors = variant_colors({v for cells in with_pairs.values() for v in cells})
    for ax, (task, cells) in zip(axes[0], with_pairs.items(), strict=True):
        n_values, key = round(1 / next(iter(cells.values()))["chance"]), capacity_key(cells)
        for variant, cell in cells.items():
            stored = stored_by_length(task, cell, n_values, key)
            draw_seeds(ax, {int(n): v for n, v in stored.items()}, colors[variant], variant, (-math.inf, math.inf))
        counts = sorted({int(n) for cell in cells.values() for n in cell[key]})
        asked = [pairs_asked(task, n) for n in counts]
        ax.plot(counts, asked, color="black", linestyle=":", linewidth=1, label="pairs asked (all stored)")
        ax.axhline(0, color="gray", linestyle="--", linewidth=1, label="none stored (chance)")
        ax.set(title=task, xlabel="segments per episode", ylabel="pairs stored (ARMT's estimator)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.grid(alpha=0.3)
    return finish_panels(fig, axes, "pairs_stored.png", out_dir)


def plot_learning(synthetic: dict[str, Any], out_dir: str) -> str:
    """accuracy_vs_episodes.png: accuracy at the trained length against training episodes seen, one panel per
    synthetic task, mean +- std over seeds per variant: how much each recipe learns per example."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(synthetic), 4))
    axes = fig.subplots(1, len(synthetic), squeeze=False)
    for ax, (task, cells) in zip(axes[0], synthetic.items(), strict=True):
        for variant, cell in cells.items():
            curve = cell.get("curve") or {"episodes": [], "mean": [], "std": []}
            x, mean, std = (np.array(curve[k]) for k in ("episodes", "mean", "std"))
            (line,) = ax.plot(x, mean, label=variant)
            ax.fill_between(x, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=line.get_color(), alpha=0.15)
        ax.axhline(next(iter(cells.values()))["chance"], color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set(
            title=task, xlabel="training episodes seen", ylabel="val accuracy at the trained length", ylim=(-0.03, 1.03)
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "accuracy_vs_episodes.png")


def plot_synthetic(synthetic: dict[str, Any], out_dir: str) -> str:
    """Accuracy against segment count, one panel per synthetic task: mean +- std over seeds, every seed faint."""
    from matplotlib.figure import Figure  # drawn without pyplot: no backend or global state is touched

    fig = Figure(figsize=(5.5 * len(synthetic), 4))
    axes = fig.subplots(1, len(synthetic), squeeze=False)
    colors = variant_colors({v for cells in synthetic.values() for v in cells})
    for ax, (task, cells) in zip(axes[0], synthetic.items(), strict=True):
        key = "acc_token" if multi_token(cells) else "acc"  # copy: per answer token, exact match is near 0
        if capacity_key(cells) in SCORED:  # drawn questions: what memory holds
            key = capacity_key(cells)
        for variant, cell in cells.items():
            by_n = {int(n): a["values"] for n, a in cell[key].items()}
            draw_seeds(ax, by_n, colors[variant], variant, (0, 1))  # accuracy lives in [0, 1]
        counts = sorted({int(n) for cell in cells.values() for n in cell[key]})
        chance = next(iter(cells.values()))["chance"]
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
        setup = next(iter(cells.values()))["setup"]
        trained = [*json.loads(setup["segment_curriculum"]), int(setup["n_segments"])]
        ax.axvspan(min(trained) - 0.2, max(trained) + 0.2, color="gray", alpha=0.1, label="trained lengths")
        plain = "answer-token accuracy" if key == "acc_token" else "answer accuracy"
        ylabel = f"accuracy on {SCORED[key][0]}" if key in SCORED else plain
        ax.set(title=task, xlabel="segments per episode", ylabel=ylabel, ylim=(-0.03, 1.03))
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.grid(alpha=0.3)
    return finish_panels(fig, axes, "accuracy_vs_segments.png", out_dir)


def plot_text(task: str, cells: dict[str, Any], out_dir: str) -> str:
    """A text task's val loss per segment (mean +- std over seeds) and, where recorded, per position; one colour
    per variant (up to 20) and one legend beside both panels."""
    import matplotlib
    from matplotlib.figure import Figure

    positions = all("pos_loss" in c for c in cells.values())
    fig = Figure(figsize=(14 if positions else 8, 4.5))
    axes = fig.subplots(1, 2 if positions else 1, squeeze=False)[0]
    cmap = matplotlib.colormaps["tab20" if len(cells) > 10 else "tab10"]
    colors = {v: cmap(i % cmap.N) for i, v in enumerate(cells)}
    for variant, cell in cells.items():
        mean = np.array([m for m, _ in cell["seg_loss"]])
        std = np.array([s for _, s in cell["seg_loss"]])
        segs = np.arange(1, len(mean) + 1)
        axes[0].errorbar(segs, mean, yerr=std, marker="o", capsize=3, label=variant, color=colors[variant])
    axes[0].set(title=f"{task}: val loss per segment", xlabel="segment", ylabel="val loss")
    axes[0].set_xticks(segs)
    if positions:  # mean over seeds, smoothed over 8 positions; segment boundaries dotted
        L = len(next(iter(cells.values()))["pos_loss"])
        width = min(8, L)
        for variant, cell in cells.items():
            smooth = np.convolve(cell["pos_loss"], np.ones(width) / width, mode="valid")
            axes[1].plot(np.arange(len(smooth)) + width / 2, smooth, label=variant, linewidth=1, color=colors[variant])
        for b in range(1, len(segs)):
            axes[1].axvline(b * L / len(segs), color="gray", linestyle=":", linewidth=0.8)
        axes[1].set(title=f"{task}: val loss per position (mean over seeds)", xlabel="position in the window",
                    ylabel="val loss")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_figure(fig, out_dir, f"{task}_loss.png")


# -----------------------------------------------------------------------------
# recipes side by side (--compare)

# settings that are no part of a recipe, or that recipes.md has a column for
PER_RUN = ("seed", "out_dir", "data_dir", "eval_interval", "log_interval", "device", "max_iters", "lr_decay_iters",
           "batch_size", "data.train_episodes", "data.val_episodes")  # fmt: skip


def scored_key(cell: dict[str, Any]) -> str:
    """The accuracy a synthetic cell is judged by: what its pairs stored are counted from where it asks a key
    again (capacity_key: opening questions, else first-asked keys), per answer token where answers have several
    tokens (multi_token), else per answer."""
    if (key := capacity_key({"": cell})) in SCORED:
        return key
    return "acc_token" if multi_token({"": cell}) else "acc"


def recipe_rows(folders: list[str]) -> list[dict[str, Any]]:
    """One row per folder (or folder:variant, that variant alone), synthetic task and variant: the settings that
    differ from the same variant's other rows (the recipe), the accuracy at the trained length per seed, the
    learning curve, and where the time went (steps, episodes, seconds a run, device)."""
    rows = []
    for entry in folders:
        folder, _, only = entry.partition(":")
        for task, cells in summarize(read_records(folder)).items():
            for variant, cell in cells.items():
                if not is_synthetic(task) or only not in ("", variant):
                    continue
                setup, key = {**cell["setup"], **{f"data.{k}": v for k, v in cell["data"].items()}}, scored_key(cell)
                trained = setup["n_segments"]
                steps, batch = int(setup["max_iters"]), int(setup["batch_size"])
                rows.append({"folder": os.path.basename(os.path.normpath(folder)), "task": task, "variant": variant,
                             "setup": setup, "key": key, "values": cell[key].get(trained, {}).get("values", []),
                             "curve": cell["curve"], "steps": steps, "episodes": steps * batch, "batch": batch,
                             "seconds": cell["train_seconds"], "device": setup.get("device", "cpu"),
                             "trained": trained})  # fmt: skip
    for task, variant in {(r["task"], r["variant"]) for r in rows}:  # a recipe differs from the same variant's others
        same = [r for r in rows if (r["task"], r["variant"]) == (task, variant)]
        keys = sorted({k for r in same for k in r["setup"]} - set(PER_RUN))
        differ = [k for k in keys if len({r["setup"].get(k) for r in same}) > 1]
        for r in same:
            r["recipe"] = ", ".join(f"{k}={r['setup'][k]}" for k in differ if k in r["setup"]) or "-"
    return rows


def recipes_table(rows: list[dict[str, Any]], bar: float) -> str:
    """recipes.md: a row per recipe, its accuracy at the trained length per seed, mean +- std, the seeds at the bar."""
    head = ["folder", "task", "variant", "recipe (settings that differ)", "steps", "batch", "episodes", "measure",
            "per seed", "mean ± std", f">= {bar}", "s a run (device)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = r["values"]
        mean, std = mean_std(vals) if vals else (math.nan, math.nan)
        per_seed = ", ".join(f"{v:.3f}" for v in vals) or "-"
        passed = f"{sum(v >= bar for v in vals)}/{len(vals)}"
        spread = f"{mean:.3f} ± {std:.3f}" if len(vals) > 1 else f"{mean:.3f} (one seed)"
        lines.append(f"| {r['folder']} | {r['task']} | {r['variant']} | {r['recipe']} | {r['steps']} | {r['batch']} | "
                     f"{r['episodes']:,} | {r['key']} at {r['trained']} seg | {per_seed} | {spread} | "
                     f"{passed} | {r['seconds']:.0f} ({r['device']}) |")  # fmt: skip
    return "\n".join(lines)


def plot_recipes(rows: list[dict[str, Any]], out_dir: str) -> str:
    """recipes.png: per task, accuracy at the trained length against training episodes seen (mean +- std over
    seeds, one line per recipe), and each seed's final accuracy against its training seconds."""
    from matplotlib.figure import Figure

    tasks = sorted({r["task"] for r in rows}, key=task_order)
    fig = Figure(figsize=(12, 4 * len(tasks)))
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    for (curves, times), task in zip(axes, tasks, strict=True):
        for r in (r for r in rows if r["task"] == task):
            label = f"{r['folder']} ({r['variant']})"
            x, mean, std = (np.array(r["curve"][k]) for k in ("episodes", "mean", "std"))
            (line,) = curves.plot(x, mean, label=label)
            curves.fill_between(x, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=line.get_color(),
                                alpha=0.15)  # fmt: skip
            marker = "o" if r["device"] == "cpu" else "^"
            times.scatter([r["seconds"]] * len(r["values"]), r["values"], color=line.get_color(), marker=marker)
        curves.set(title=f"{task}: learning per example", xlabel="training episodes seen", ylim=(-0.03, 1.03),
                   ylabel="val accuracy at the trained length")  # fmt: skip
        times.set(title=f"{task}: final accuracy per seed (o cpu, ^ gpu)", xlabel="seconds a run (mean over seeds)",
                  ylabel="accuracy at the trained length", ylim=(-0.03, 1.03))  # fmt: skip
        for ax in (curves, times):
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        curves.legend(fontsize=7)
    return save_figure(fig, out_dir, "recipes.png")


def compare_recipes(folders: list[str], out_dir: str, bar: float = 0.95) -> list[dict[str, Any]]:
    """Read the grid folders' records (nothing trains), write out_dir/recipes.md and recipes.png; returns the rows."""
    for folder in (entry.partition(":")[0] for entry in folders):
        if not os.path.isdir(folder):
            raise ValueError(f"compare: '{folder}' is not a folder (name grid out_dirs, or out_dir:variant, "
                             "comma-separated)")  # fmt: skip
    rows = recipe_rows(folders)
    if not rows:
        raise ValueError(f"compare: no synthetic-task records in {', '.join(folders)}")
    check_writable_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    table = recipes_table(rows, bar)
    with open(os.path.join(out_dir, "recipes.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"wrote {plot_recipes(rows, out_dir)}")
    return rows


# -----------------------------------------------------------------------------
# capacity against the number of pairs: the mqar<P> grids of several folders side by side


def grids_by_pairs(folders: list[str]) -> dict[int, dict[str, Any]]:
    """P -> {"folder", "task", "cells"} for every mqar<P> task whose records in the folders have per-value accuracy,
    in increasing P. A P found in two folders is a ValueError: which of the two recipes is meant is the user's call."""
    found: dict[int, dict[str, Any]] = {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise ValueError(f"capacity: '{folder}' is not a folder (name grid out_dirs, comma-separated)")
        for task, cells in summarize(read_records(folder)).items():
            P = mqar_pairs(task)
            if P is None or not capacity_cells(cells):
                continue
            if P in found:
                raise ValueError(f"capacity: {task} is in both {found[P]['folder']} and {folder}: name one of them")
            found[P] = {"folder": folder, "task": task, "cells": cells}
    if not found:
        raise ValueError(f"capacity: no mqar<P> records in {', '.join(folders)}")
    return dict(sorted(found.items()))


def stored_by_pairs(grids: dict[int, dict[str, Any]]) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """segment count -> variant -> P -> {seed: pairs stored} (ARMT's estimator of each P's capacity_key accuracy)."""
    out: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for P, grid in grids.items():
        task, cells = grid["task"], grid["cells"]
        key, n_values = capacity_key(cells), round(1 / next(iter(cells.values()))["chance"])
        for variant, cell in cells.items():
            for n in cell[key]:
                seeds = by_seed_values(task, cell, n, n_values, key)
                out.setdefault(n, {}).setdefault(variant, {})[P] = seeds
    ordered = {n: out[n] for n in sorted(out, key=int)}
    return {
        n: dict(sorted(by_variant.items(), key=lambda kv: variant_order(kv[0]))) for n, by_variant in ordered.items()
    }


def grid_recipe(P: int, grid: dict[str, Any]) -> str:
    """One line of what a P was trained with, so that a reader sees where the recipes of two P differ."""
    cells = grid["cells"]
    setup, data = next(iter(cells.values()))["setup"], next(iter(cells.values()))["data"]
    steps, batch = int(setup["max_iters"]), int(setup["batch_size"])
    key = capacity_key(cells)
    scored = SCORED[key][0] if key in SCORED else "every answer"
    asked = data.get("n_queries", "0")
    queries = f"{asked if asked != '0' else 'P'} {data.get('queries', 'shuffled')} questions, " if data else ""
    return (f"- P = {P}: `{grid['folder']}` ({grid['task']}), {steps} steps x batch {batch} ({steps * batch:,} "
            f"episodes), lr {setup['learning_rate']}, segments of {setup['block_size']} tokens, trained on "
            f"{setup['n_segments']} (curriculum {setup['segment_curriculum']}), {queries}scored on {scored}, "
            f"{setup.get('device', 'cpu')}")  # fmt: skip


def capacity_report(grids: dict[int, dict[str, Any]]) -> str:
    """capacity.md: per segment count, the pairs each variant stores at each P (mean ± std, seeds), then each
    memory variant minus its one bank (and minus the one bank reading as many slots) paired by seed at each P."""
    stored = stored_by_pairs(grids)
    Ps = list(grids)
    lines = ["### What each P was trained with", "", *(grid_recipe(P, g) for P, g in grids.items()), ""]
    for n, by_variant in stored.items():
        lines += [f"### pairs stored at {n} segments, by pairs asked (mean ± std over seeds, seeds in brackets)", "",
                  "| variant | " + " | ".join(f"P = {P}" for P in Ps) + " |", "|---|" + "---|" * len(Ps)]  # fmt: skip
        for variant, by_P in by_variant.items():
            row = [stored_cell(list(by_P[P].values())) if P in by_P else "-" for P in Ps]
            lines.append(f"| {variant} | " + " | ".join(row) + " |")
        lines += ["", *paired_by_pairs(grids, n, by_variant, Ps)]
    return "\n".join(lines)


def stored_cell(stored: list[float]) -> str:
    """Pairs stored over seeds: '3.84 ± 0.14 (5)', or '8.35 (1)' for one seed, which has no spread."""
    mean, std = mean_std(stored)
    return f"{mean:.2f} ± {std:.2f} ({len(stored)})" if len(stored) > 1 else f"{mean:.2f} (1)"


def paired_by_pairs(
    grids: dict[int, dict[str, Any]], n: str, by_variant: dict[str, dict[int, dict[str, float]]], Ps: list[int]
) -> list[str]:
    """At one segment count, each memory variant minus its one bank (and the one bank of as many read slots) in
    pairs stored, paired by seed, one column per P: the rows of paired_capacity_table across the folders."""
    rows: dict[tuple[str, str], dict[int, str]] = {}
    for P in Ps:
        cells = grids[P]["cells"]
        for variant in cells:
            for base in (one_bank(variant, cells), same_read_slots_bank(variant, cells)):
                if base is not None and P in by_variant.get(variant, {}) and P in by_variant.get(base, {}):
                    diffs = seed_diffs(by_variant[variant][P], by_variant[base][P])
                    rows.setdefault((variant, base), {})[P] = paired_pairs_cell(diffs)
    if not rows:
        return []
    return [
        f"### minus one bank at {n} segments, paired by seed (positive: the variant holds more)",
        "",
        "| variant | one bank | " + " | ".join(f"P = {P}" for P in Ps) + " |",
        "|---|---|" + "---|" * len(Ps),
        *(f"| {v} | {b} | " + " | ".join(by_P.get(P, "-") for P in Ps) + " |" for (v, b), by_P in rows.items()),
        "",
        "each cell: mean ± std of the differences over the seeds both have, [seeds where the variant holds more / "
        "seeds], then two-sided p of a paired t-test / of an exact sign-flip test (its floor is 2 / 2^seeds)",
        "",
    ]


def plot_capacity_by_pairs(grids: dict[int, dict[str, Any]], out_dir: str) -> str:
    """capacity.png: pairs stored against pairs asked, one panel per segment count, mean +- std over seeds per
    variant and every seed faint, beside all pairs stored (y = P)."""
    from matplotlib.figure import Figure

    stored = stored_by_pairs(grids)
    fig = Figure(figsize=(5.5 * len(stored), 4))
    axes = fig.subplots(1, len(stored), squeeze=False)
    colors = variant_colors({v for by_variant in stored.values() for v in by_variant})
    Ps = list(grids)
    for ax, (n, by_variant) in zip(axes[0], stored.items(), strict=True):
        for variant, by_P in by_variant.items():
            points = {P: list(seeds.values()) for P, seeds in by_P.items()}
            draw_seeds(ax, points, colors[variant], variant, (-math.inf, math.inf))
        ax.plot(Ps, Ps, color="black", linestyle=":", linewidth=1, label="pairs asked (all stored)")
        ax.axhline(0, color="gray", linestyle="--", linewidth=1, label="none stored (chance)")
        ax.set(title=f"mqar at {n} segments", xlabel="pairs asked (P)", ylabel="pairs stored (ARMT's estimator)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ps, [str(P) for P in Ps])
        ax.grid(alpha=0.3)
    return finish_panels(fig, axes, "capacity.png", out_dir)


def compare_capacity(folders: list[str], out_dir: str) -> str:
    """Read the folders' mqar<P> records (nothing trains), write out_dir/capacity.md and capacity.png; returns the
    table."""
    grids = grids_by_pairs(folders)
    check_writable_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    table = capacity_report(grids)
    with open(os.path.join(out_dir, "capacity.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"wrote {plot_capacity_by_pairs(grids, out_dir)}")
    return table


# -----------------------------------------------------------------------------
# a folder's outputs, all at once (benchmark.py calls it after every grid)


def write_outputs(out_dir: str) -> None:
    """table.md, summary.json and the plots, from every record in out_dir: the folder's tables cover all the grids
    run into it (each record is the latest run of its task, variant and seed)."""
    summary = summarize(read_records(out_dir))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table = format_tables(summary)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    for path in plot(summary, out_dir):
        print(f"wrote {path}")
