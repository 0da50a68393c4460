"""Collect a table's finished runs and write its markdown table and PNG plots.

Wall-time ratios are per seed (an arm's training-step time over its baseline's, same seed, same
harness invocation), then summarised as median [min, max]: absolute times on a shared machine drift,
ratios of runs made close together drift less. The CPU time of the training steps (``summary.json``
``cpu_time_s``) is given too, as contention inflates it less than wall time.
"""

from __future__ import annotations

import json
import platform
import shlex
import time
from pathlib import Path
from typing import Dict, List, Optional

from runner import EVAL_FILE, HARNESS_FILE, SUMMARY_FILE, read_json, run_dir
from stats import difference, fmt_mean_sd, fmt_ratio, mean_sd, query_sampling_se, verdict
from tables import Table, baseline_of


def _metrics(out: Path) -> List[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(table: Table, runs_dir: Path, seeds) -> Dict[str, Dict[int, dict]]:
    """``{arm: {seed: record}}`` for every finished run (training summary + harness evaluation)."""
    found: Dict[str, Dict[int, dict]] = {}
    for arm in table.arms:
        for seed in seeds:
            out = run_dir(runs_dir, table, arm, seed)
            summary, harness = read_json(out / SUMMARY_FILE), read_json(out / HARNESS_FILE)
            if summary is None or harness is None:
                continue
            ev = read_json(out / EVAL_FILE) or {}
            knn = (summary.get("eval") or {}).get("knn") or ev.get("transfer_knn") or {}
            rand = (summary.get("eval") or {}).get("knn_random_init") or {}
            lines = _metrics(out)
            rec = {
                "steps": summary["steps"], "epochs": summary.get("epochs"),
                "train_flops": summary["train_flops"], "dense_train_flops": summary["dense_train_flops"],
                "overhead_flops": summary.get("overhead_flops") or 0.0,
                "time_s": summary["wall_time_s"], "cpu_s": summary.get("cpu_time_s"),
                "removal": summary.get("mean_removal_ratio"), "kept_tokens": summary.get("mean_kept_token_ratio"),
                "sparsity": summary.get("mean_sparsity"), "fwd_ratio": summary.get("mean_forward_flops_ratio"),
                "knn": knn.get("top1"), "num_queries": knn.get("num_test"), "random_knn": rand.get("top1"),
                "linear": (ev.get("linear") or {}).get("top1"),
                "dense_sub_knn": ((ev.get("dense_subnetwork") or {}).get("knn") or {}).get("top1"),
                "dense_sub_linear": ((ev.get("dense_subnetwork") or {}).get("linear") or {}).get("top1"),
                "hardware": summary.get("hardware"), "git_commit": summary.get("git_commit"),
                "command": harness["command"],
                "curve": _curve(ev.get("convergence"), lines, rand.get("top1")),
                "last_fwd_ratio": next((l["forward_flops_ratio"] for l in reversed(lines) if "forward_flops_ratio" in l),
                                       None),
            }
            found.setdefault(arm.name, {})[seed] = rec
    return found


def _curve(conv: Optional[dict], lines: List[dict], random_knn: Optional[float]):
    """``[(step, cumulative FLOPs, cumulative training-step CPU time, kNN)]``, from random init when known.

    CPU time, not wall time: on a shared machine the wall time of one run depends on what else ran."""
    if not conv:
        return None
    by_step = {l["step"]: l for l in lines}
    points = [(0, 0.0, 0.0, random_knn)] if random_knn is not None else []
    for step, top1 in sorted((int(k), v) for k, v in conv.items()):
        line = by_step.get(step)
        if line is not None and "train_cpu_s" in line:
            points.append((step, line["train_flops"], line["train_cpu_s"], top1))
    return points


def _per_seed_ratio(rows, base, key):
    return [rows[s][key] / base[s][key] for s in rows if s in base and rows[s].get(key) and base[s].get(key)]


def _col(rows, key):
    return [r[key] for r in rows.values()]


def markdown(table: Table, found, seeds, command: str, scale: str) -> str:
    first = next((r for rows in found.values() for r in rows.values()), {})
    lines = [f"# {table.title}", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')}, {first.get('hardware', '?')} "
             f"({platform.node() or 'this machine'}), commit {str(first.get('git_commit', '?'))[:7]} (first run), "
             f"scale `{scale}`, seeds {', '.join(map(str, seeds))}.", ""]
    if first:
        lines += ["Baseline command (seed 0 or the first seed found; the other arms add their method flags):", "",
                  "```bash", " ".join(shlex.quote(a) for a in _strip_python(first["command"])), "```", ""]
    head = ("| arm | seeds | steps | training FLOPs (TFLOP) | FLOPs vs baseline | step time vs baseline | "
            "CPU time vs baseline | removal / sparsity | kNN top-1 % | Δ kNN (± se) | verdict | linear top-1 % | "
            "Δ linear |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for arm in table.arms:
        rows = found.get(arm.name)
        if not rows:
            lines.append(f"| {arm.label} | 0 | | | | | | | not run | | | | |")
            continue
        base = found.get(baseline_of(table, arm), {})
        is_base = baseline_of(table, arm) == arm.name
        d_knn, se_knn = difference(_col(rows, "knn"), _col(base, "knn"))
        d_lin, se_lin = difference(_col(rows, "linear"), _col(base, "linear"))
        sparsity = [r["removal"] if r["removal"] is not None else r["sparsity"] if r["sparsity"] is not None
                    else (1 - r["kept_tokens"]) if r["kept_tokens"] is not None else None for r in rows.values()]
        lines.append(" | ".join([
            f"| {arm.label}", str(len(rows)), fmt_mean_sd(_col(rows, "steps"), 0),
            fmt_mean_sd([f / 1e12 for f in _col(rows, "train_flops")], 2),
            "1" if is_base else fmt_ratio(_per_seed_ratio(rows, base, "train_flops")),
            "1" if is_base else fmt_ratio(_per_seed_ratio(rows, base, "time_s")),
            "1" if is_base else fmt_ratio(_per_seed_ratio(rows, base, "cpu_s")),
            fmt_mean_sd(sparsity, 3) if any(v is not None for v in sparsity) else "",
            fmt_mean_sd(_col(rows, "knn")),
            "" if is_base or d_knn is None else f"{d_knn:+.1f}" + (f" ± {se_knn:.1f}" if se_knn else ""),
            "" if is_base else verdict(d_knn, se_knn),
            fmt_mean_sd(_col(rows, "linear")) if any(v is not None for v in _col(rows, "linear")) else "",
            "" if is_base or d_lin is None else f"{d_lin:+.1f}" + (f" ± {se_lin:.1f}" if se_lin else ""),
        ]) + " |")
    extra = _extra_rows(table, found)
    if extra:
        lines += [""] + extra
    n_q = first.get("num_queries")
    if n_q and first.get("knn") is not None:
        lines += ["", f"kNN (k = 200, cosine) on {n_q} held-out queries: one measurement's query-sampling error is "
                      f"about ±{query_sampling_se(first['knn'], n_q):.1f} points (binomial); seeds vary the weights, "
                      "augmentations and data order, not the queries. 'within noise': |Δ| <= 2 standard errors "
                      "of the difference of seed means."]
    if table.reading:
        lines += ["", table.reading]
    return "\n".join(lines) + "\n"


def _extra_rows(table: Table, found) -> List[str]:
    """Rows some tables need besides the main one: random init, a dual-gate run's dense sub-network."""
    out = []
    by_seed = {seed: r["random_knn"] for rows in found.values() for seed, r in rows.items()
               if r.get("random_knn") is not None}  # the same architecture and seed: the same init
    if by_seed:
        out.append(f"Random-init encoder, same kNN: {fmt_mean_sd(list(by_seed.values()))} % (seeds "
                   f"{', '.join(map(str, sorted(by_seed)))}; `--knn-random-init`, weights drawn with the run's seed).")
    for arm in table.arms:
        rows = found.get(arm.name, {})
        sub = [r["dense_sub_knn"] for r in rows.values() if r.get("dense_sub_knn") is not None]
        if sub:
            fwd = [r["last_fwd_ratio"] for r in rows.values() if r.get("last_fwd_ratio") is not None]
            out.append(f"{arm.label}: the *gated* sub-network is the row above (kNN {fmt_mean_sd(_col(rows, 'knn'))} %, "
                       f"linear {fmt_mean_sd(_col(rows, 'linear'))} %; gated forward FLOPs ratio at the last log "
                       f"{fmt_mean_sd(fwd, 3)}); its *dense* sub-network, exported as a plain timm ResNet: kNN "
                       f"{fmt_mean_sd(sub)} %, linear {fmt_mean_sd([r['dense_sub_linear'] for r in rows.values()])} %.")
    return out


def _strip_python(cmd: List[str]) -> List[str]:
    """The command as a user types it in the repository root: no interpreter path, no checkout prefix."""
    def relative(arg: str) -> str:
        for part in ("/training/", "/runs/", "/benchmarks/"):
            if arg.startswith("/") and part in arg:
                return arg[arg.index(part) + 1:]
        return arg

    out = [relative(a) for a in cmd]
    return ["python", *out[1:]] if out and out[0].endswith(("python", "python3")) else out


# ------------------------------------------------------------------------------------------------ plots
def plot_cost(table: Table, found, path: Path) -> Optional[Path]:
    """kNN top-1 against training FLOPs and against training-step CPU time, one marker per arm (mean ± sd)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in table.arms if found.get(a.name) and any(r["knn"] is not None for r in found[a.name].values())]
    if not arms:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for arm in arms:
        rows = found[arm.name]
        for ax, key, scale in ((axes[0], "train_flops", 1e12), (axes[1], "cpu_s", 60.0)):
            xs = [r[key] / scale for r in rows.values()]
            ys = [r["knn"] for r in rows.values()]
            (mx, sx), (my, sy) = mean_sd(xs), mean_sd(ys)
            ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt="o", capsize=3, label=arm.label)
            ax.scatter(xs, ys, s=8, alpha=0.35, color=ax.lines[-1].get_color() if ax.lines else None)
    axes[0].set_xlabel("training FLOPs (TFLOP, forward + backward)")
    axes[1].set_xlabel("training-step CPU time (min, 1 thread, this machine)")
    axes[0].set_ylabel("kNN top-1 (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(table.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_convergence(table: Table, found, path: Path) -> Optional[Path]:
    """Fig. 6 at this scale: kNN top-1 of the saved checkpoints against cumulative FLOPs and time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = [a for a in table.arms if a.convergence and found.get(a.name)]
    curves = {a.name: [r["curve"] for r in found[a.name].values() if r.get("curve")] for a in arms}
    arms = [a for a in arms if curves[a.name]]
    if not arms:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for arm in arms:
        n = min(len(c) for c in curves[arm.name])
        pts = np.array([c[:n] for c in curves[arm.name]], dtype=float)  # seeds x points x (step, flops, time, knn)
        for ax, col, scale in ((axes[0], 1, 1e12), (axes[1], 2, 60.0)):
            x = pts[:, :, col].mean(0) / scale
            y, s = pts[:, :, 3].mean(0), pts[:, :, 3].std(0, ddof=1) if len(pts) > 1 else 0 * pts[0, :, 3]
            ax.plot(x, y, marker="o", label=f"{arm.label} ({len(pts)} seeds)")
            ax.fill_between(x, y - s, y + s, alpha=0.2)
    axes[0].set_xlabel("cumulative training FLOPs (TFLOP)")
    axes[1].set_xlabel("cumulative training-step CPU time (min, 1 thread)")
    axes[0].set_ylabel("kNN top-1 (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Convergence: kNN top-1 of the saved checkpoints (mean ± sd over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def convergence_markdown(table: Table, found) -> str:
    arms = [a for a in table.arms if a.convergence and found.get(a.name)]
    rows = []
    for arm in arms:
        curves = [r["curve"] for r in found[arm.name].values() if r.get("curve")]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        for i in range(n):
            step = curves[0][i][0]
            rows.append(f"| {arm.label} | {step} | {fmt_mean_sd([c[i][1] / 1e12 for c in curves], 2)} | "
                        f"{fmt_mean_sd([c[i][2] / 60 for c in curves], 2)} | {fmt_mean_sd([c[i][3] for c in curves])} |")
    if not rows:
        return ""
    return "\n".join(["", "## Convergence (kNN of the saved checkpoints; step 0 = random init)", "",
                      "| arm | step | cumulative FLOPs (TFLOP) | cumulative step CPU time (min) | kNN top-1 % |",
                      "|---|---|---|---|---|", *rows]) + "\n"


def write(table: Table, runs_dir: Path, results_dir: Path, seeds, command: str, scale: str) -> Path:
    found = collect(table, runs_dir, seeds)
    results_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(table, found, seeds, command, scale)
    for name, fn in ((f"{table.name}.png", plot_cost), (f"{table.name}_convergence.png", plot_convergence)):
        made = fn(table, found, results_dir / name)
        if made is not None:
            text += f"\n![{name}]({name})\n"
    text += convergence_markdown(table, found)
    out = results_dir / f"{table.name}.md"
    out.write_text(text)
    (results_dir / f"{table.name}.json").write_text(json.dumps(found, indent=1, default=str))
    return out
