"""What spatial waxing costs in one SimWnW step: the compiled decision loop vs its tensor-op twin.

Captures the inputs of every ``wax_spatial_compact`` call of one pair step (ResNet-50, 224 px by
default, the fused executor), checks that both paths give the same masks and counts, then replays the
calls with each path, interleaved, ``--rounds`` times. The twin is what runs where numba cannot
(``lean_exec._spatial_growth_torch``: ring distance by dilations, gathers, a separate peak pass, index_add
block sums, scatters).

    OMP_NUM_THREADS=T PYTHONPATH=. python benchmarks/wax_cost.py --source $I --threads T --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import timm
import torch

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
import simwnw_hf.simwnw.lean_exec as lean_exec
from simwnw_hf.simwnw import wax_jit

from simwnw_step import make_batch, pair_step  # noqa: E402  (benchmarks/ is the script directory)


def capture(model, batch, settings) -> list:
    """The (args, kwargs) of every spatial waxing call of one pair step, inputs cloned."""
    calls, real = [], lean_exec.wax_spatial_compact

    def spy(h1, h2, r1, r2, corr, *args, **kwargs):
        calls.append(((h1.detach().clone(), h2.detach().clone(), r1.clone(), r2.clone(), corr, *args), kwargs))
        return real(h1, h2, r1, r2, corr, *args, **kwargs)

    lean_exec.wax_spatial_compact = spy
    try:
        pair_step(model, *batch, settings)
    finally:
        lean_exec.wax_spatial_compact = real
    return calls


def replay(calls, twin: bool):
    saved = wax_jit._kernel, wax_jit._WARNED
    if twin:
        wax_jit._kernel = None
        wax_jit._WARNED = True  # the fallback's warning is for users, not for this benchmark
    try:
        t = time.perf_counter()
        out = [lean_exec.wax_spatial_compact(*args, **kwargs) for args, kwargs in calls]
        return time.perf_counter() - t, out
    finally:
        wax_jit._kernel, wax_jit._WARNED = saved


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="image dataset (parquet/folder) read by load_image_dataset")
    p.add_argument("--model", default="simwnw_resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    if wax_jit._kernel is None:
        raise SystemExit("numba is unavailable here: there is no compiled path to compare")
    torch.set_num_threads(args.threads)
    model = timm.create_model(args.model).train()
    cfg = model.pretrained_cfg
    batch = make_batch(args.source, args.batch, args.size, cfg["mean"], cfg["std"], seed=0)
    settings = replace(model.pair_settings, executor="fused")
    pair_step(model, *batch, settings)  # warm-up: compiles / loads the kernels
    calls = capture(model, batch, settings)
    for a, b in zip(replay(calls, False)[1], replay(calls, True)[1]):
        if not (torch.equal(a.removed1, b.removed1) and torch.equal(a.removed2, b.removed2)
                and float(a.compared_pairs) == float(b.compared_pairs)):
            raise SystemExit("compiled and tensor-op waxing disagree")
    times = {"compiled decision loop (numba)": [], "tensor ops (twin)": []}
    for _ in range(args.rounds):
        times["compiled decision loop (numba)"].append(replay(calls, False)[0])
        times["tensor ops (twin)"].append(replay(calls, True)[0])
    print("| model / input | threads | waxing calls | path | per step, median (min-max) |\n|---|---|---|---|---|")
    for name, v in times.items():
        print(f"| {args.model} {args.size}px b{args.batch} | {args.threads} | {len(calls)} | {name} | "
              f"{1e3 * statistics.median(v):.1f} ms ({1e3 * min(v):.1f}-{1e3 * max(v):.1f}) |")


if __name__ == "__main__":
    main()
