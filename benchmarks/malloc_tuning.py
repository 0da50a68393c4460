"""What glibc malloc's trimming costs a CPU training step: dense vs SimWnW, before and after tune_malloc.

Why: a step frees its activations and gradients and allocates them again the next step; with glibc's
defaults much of that memory goes back to the kernel in between and comes back as minor page faults
(zeroed pages, system time) inside the kernels that first write it. ``simwnw_hf.train.allocator.tune_malloc``
(what the training scripts apply on CPU unless ``--no-malloc-tuning``) keeps it in the process. The
setting cannot be undone in a running process, so one process times both arms, interleaved, with
glibc's defaults first and then tuned; per step it reports wall time, the ratio to the dense step of
the same repeat (wall and process CPU time), minor page faults and system time. Batches are cycled
(``--batches``) as in ``simwnw_step.py``.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/malloc_tuning.py --source <imagenet-sample>/dev.parquet \\
        --model simwnw_resnet50 --size 224 --batch 8 --threads 2 --repeats 8
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import timm
import torch

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.pruning.settings import SimWnWSettings
from simwnw_hf.train.allocator import tune_malloc

from simwnw_step import dense_step, make_batches, pair_step  # noqa: E402  (benchmarks/ is the script directory)


def timed(fn) -> tuple[float, float, int, float]:
    """(wall s, process CPU s, minor faults, system s) of ``fn()``."""
    u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, u1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    sys_s = u1.ru_stime - u0.ru_stime
    return wall, u1.ru_utime - u0.ru_utime + sys_s, u1.ru_minflt - u0.ru_minflt, sys_s


def phase(model, batches, repeats: int) -> dict:
    """``repeats`` interleaved (dense, SimWnW) steps on the cycled batches."""
    rows = {"dense": [], "simwnw": []}
    for r in range(repeats):
        x1, x2, g1, g2 = batches[r % len(batches)]
        rows["dense"].append(timed(lambda: dense_step(model, x1, x2)))
        rows["simwnw"].append(timed(lambda: pair_step(model, x1, x2, g1, g2, model.pair_settings)))
    return rows


def report(label: str, rows: dict, head: str) -> list[str]:
    med = lambda arm, i: statistics.median(x[i] for x in rows[arm])  # noqa: E731
    out = []
    for arm in rows:
        wall = [b[0] / a[0] for a, b in zip(rows["dense"], rows[arm])]
        cpu = [b[1] / a[1] for a, b in zip(rows["dense"], rows[arm])]
        out.append(f"| {head} | {label} | {arm} | {med(arm, 0):.2f} s ({min(x[0] for x in rows[arm]):.2f}-"
                   f"{max(x[0] for x in rows[arm]):.2f}) | **{statistics.median(wall):.3f}** ({min(wall):.2f}-"
                   f"{max(wall):.2f}) | {statistics.median(cpu):.3f} ({min(cpu):.2f}-{max(cpu):.2f}) | "
                   f"{med(arm, 2):.0f} | {med(arm, 3):.2f} s |")
        print(out[-1], flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="image dataset (parquet/folder) read by load_image_dataset")
    p.add_argument("--model", default="simwnw_resnet18_cifar")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=8, help="interleaved (dense, SimWnW) pairs per phase")
    p.add_argument("--batches", type=int, default=4, help="different batches cycled over the repeats")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=0).train()
    model.configure_pair_pruning(SimWnWSettings())
    cfg = model.pretrained_cfg
    batches = make_batches(args.source, args.batches, args.batch, args.size, cfg["mean"], cfg["std"])
    for x1, x2, g1, g2 in batches:  # warm-up: compiled kernels for every batch's shapes
        pair_step(model, x1, x2, g1, g2, model.pair_settings)
    dense_step(model, *batches[0][:2])
    head = f"{args.model} {args.size}px b{args.batch}, {args.threads} thread{'s' if args.threads > 1 else ''}"
    print("| case | malloc | arm | step time median (min-max) | time ratio to dense (min-max) | CPU ratio (min-max) "
          "| minor faults per step | system time per step |\n|---|---|---|---|---|---|---|---|")
    report("glibc defaults", phase(model, batches, args.repeats), head)
    applied, why = tune_malloc()
    if not applied:
        raise SystemExit(f"tune_malloc did not apply: {why}")
    dense_step(model, *batches[0][:2])
    pair_step(model, *batches[0], model.pair_settings)
    report("tuned", phase(model, batches, args.repeats), head)


if __name__ == "__main__":
    main()
