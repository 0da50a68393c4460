"""SIGKILL at chosen and at random moments: every resume reaches the weights of an uninterrupted run.

After each kill: every ``checkpoint-<step>/`` left behind verifies (nothing half-written carries a
checkpoint's name); after the final resume: weights bit-identical to the uninterrupted run, and
``metrics.jsonl`` holds each step exactly once, every line whole, with the same losses.
"""

import json
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from faultkit import run_child, same_weights, weights  # noqa: E402

from simwnw_hf.train.checkpoint import checkpoint_dirs, verify_checkpoint  # noqa: E402
from simwnw_hf.train.config import TrainConfig  # noqa: E402

STEPS = 10


def tiny(output_dir, **kw):
    # 40 images / batch 8 = 5 steps per epoch: the 10 steps cross an epoch boundary
    args = dict(framework="simsiam", image_size=16, batch_size=8, max_samples=40, max_steps=STEPS, knn_eval=False,
                output_dir=str(output_dir), log_every=1, save_every=3, keep_checkpoints=2,
                model_args='{"channels": [8, 16, 16, 16]}', framework_args='{"hidden_dim": 32, "out_dim": 32}')
    args.update(kw)
    return TrainConfig(**args)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    started = time.time()
    assert run_child(tiny(out)) == "finished"
    return {"weights": weights(out / f"checkpoint-{STEPS}"), "metrics": _metrics(out), "seconds": time.time() - started,
            "summary": json.loads((out / "summary.json").read_text())}


def _metrics(out) -> list:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _check_no_fake_checkpoint(out) -> None:
    """Every folder named like a checkpoint is a complete one."""
    for ckpt in checkpoint_dirs(out):
        verify_checkpoint(ckpt)


def _rerun(out):
    """The user's next command after a kill: ``--resume`` once a checkpoint folder exists, else the same command
    again (``--resume`` with nothing to resume from is an error, as in transformers' Trainer)."""
    return tiny(out, resume=bool(checkpoint_dirs(out)))


def _finish_and_compare(out, reference) -> None:
    for _ in range(3):  # a clean resume; a second one only if the first had nothing left to do
        outcome = run_child(_rerun(out))
        assert outcome == "finished", (Path(out).parent / "child_error.txt").read_text()
        if (Path(out) / "summary.json").is_file():
            break
    assert same_weights(weights(Path(out) / f"checkpoint-{STEPS}"), reference["weights"])
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # once each
    assert [r["loss"] for r in records] == [r["loss"] for r in reference["metrics"]]
    summary = json.loads((Path(out) / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["train_flops"] == reference["summary"]["train_flops"]


# (fault, which call of the wrapped function kills): one run per line, each resumed to the end
TARGETED = [
    ("in_step", 4),               # inside step 4, after backward
    ("between_steps", 7),         # after step 7's optimizer step, before it is logged/checkpointed
    ("metrics_append", 5),        # torn metrics line for step 5
    ("weights_write", 2),         # half of checkpoint-6's model.safetensors
    ("before_marker", 3),         # checkpoint-9 written except its completion marker
    ("old_checkpoint_removal", 1),  # pruning checkpoint-3 when checkpoint-9 lands
    ("summary_write", 1),         # final summary.json half written
    ("run_config_write", 1),      # run_config.json half written at start
]


def test_targeted_kills_then_random_kills_resume_to_identical_weights(tmp_path, reference):
    """8 kills in named phases + 4 at random moments (~10 s of CPU on a tiny run)."""
    outcomes = []
    for fault, n in TARGETED:
        out = tmp_path / fault / "run"
        assert run_child(tiny(out), fault, n) == "killed", f"{fault} never fired"
        _check_no_fake_checkpoint(out)
        outcomes.append(fault)
        if fault == "metrics_append":  # a torn line is really there before the resume repairs it
            last = (out / "metrics.jsonl").read_text().splitlines()[-1]
            with pytest.raises(json.JSONDecodeError):
                json.loads(last)
        _finish_and_compare(out, reference)
    # a kill during resume's truncation of metrics.jsonl, after an earlier kill left lines to drop
    out = tmp_path / "truncate" / "run"
    assert run_child(tiny(out), "between_steps", 5) == "killed"
    assert run_child(tiny(out, resume=True), "metrics_truncate", 1) == "killed"
    outcomes += ["between_steps", "metrics_truncate"]
    _finish_and_compare(out, reference)
    outcomes += _random_kills(tmp_path / "random", reference, kills=3, seed=0)
    print(f"\ninjected {len(outcomes)} kills: {outcomes}; every resume reached the reference weights")
    assert len(outcomes) >= 12


def _random_kills(root, reference, kills: int, seed: int) -> list:
    """``kills`` SIGKILLs at uniformly random moments of a run; one out dir, resumed after each kill."""
    rng = random.Random(seed)
    out = Path(root) / "run"
    landed = []
    attempts = 0
    while len(landed) < kills and attempts < 4 * kills:
        attempts += 1
        if (out / "summary.json").is_file():  # finished: compare, start a fresh run for the next kills
            _finish_and_compare(out, reference)
            out = Path(root) / f"run{attempts}"
        delay = rng.uniform(0.0, reference["seconds"])
        outcome = run_child(_rerun(out), kill_after=delay)
        assert outcome in ("killed", "finished"), (Path(root) / "child_error.txt").read_text()
        if outcome == "killed":
            landed.append(f"random@{delay:.2f}s")
            _check_no_fake_checkpoint(out)
    _finish_and_compare(out, reference)
    return landed


@pytest.mark.slow
def test_many_random_kills(tmp_path, reference):
    """60 SIGKILLs at random moments over consecutive resumes (a few minutes of CPU)."""
    landed = _random_kills(tmp_path, reference, kills=60, seed=1)
    print(f"\ninjected {len(landed)} random kills; every resume reached the reference weights")
    assert len(landed) == 60
