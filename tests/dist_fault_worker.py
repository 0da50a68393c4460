"""Run under ``accelerate launch`` (2 processes) by tests/test_faults_distributed.py.

``nan_grad``: process 1 alone gets a NaN gradient in step 3; both processes must stop at step 3.
``long``: a long run that the test kills one process of; each process writes its pid first.
"""

import os
import sys
from pathlib import Path


def poison_rank1_gradient(step: int) -> None:
    import simwnw_hf.train.trainer as trainer_mod

    real_build = trainer_mod.build_framework

    def build(cfg, backbone):
        framework = real_build(cfg, backbone)
        real_forward, calls = framework.forward, {"n": 0}
        target = step + 1  # the first forward is the one-off FLOPs metering pass

        def forward(batch, *args, **kwargs):
            calls["n"] += 1
            out = real_forward(batch, *args, **kwargs)
            if calls["n"] == target and os.environ.get("RANK") == "1":
                next(backbone.parameters()).register_hook(lambda g: g * float("nan"))
            return out
        framework.forward = forward
        return framework
    trainer_mod.build_framework = build


def main(mode: str, out: str, data: str, steps: str) -> None:
    from simwnw_hf.train import main as train_main

    Path(f"{out}.pid.{os.environ.get('RANK')}").write_text(str(os.getpid()))
    if mode == "nan_grad":
        poison_rank1_gradient(3)
    argv = ["--dataset", data, "--image-size", "16", "--batch-size", "4", "--max-steps", steps, "--save-every", "1",
            "--log-every", "1", "--no-knn-eval", "--model-args", '{"channels": [8, 16, 16, 16]}',
            "--framework-args", '{"hidden_dim": 32, "out_dim": 32}', "--output-dir", out]
    if Path(out).exists():
        argv.append("--resume")
    train_main("simsiam", argv)


if __name__ == "__main__":
    main(*sys.argv[1:])
