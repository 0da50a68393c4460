"""The experiment harness (benchmarks/experiments): every arm's command is a valid training command,
runs are reused only for the same command, equal-FLOPs steps and noise verdicts are what they say."""

import json
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments"
sys.path.insert(0, str(HARNESS))

import runner as harness_runner  # noqa: E402
import stats as harness_stats  # noqa: E402
import tables as harness_tables  # noqa: E402

from simwnw_hf.train.config import parse_config  # noqa: E402


def _runner(tmp_path, table, scale="cpu", seeds=(0,)):
    return harness_runner.Runner(harness_tables.TABLES[table], scale, seeds, tmp_path, "some/data",
                                 [sys.executable], 1, 1, [], [])


@pytest.mark.parametrize("scale", ["cpu", "paper"])
@pytest.mark.parametrize("table", list(harness_tables.TABLES))
def test_every_arm_is_a_valid_training_command(tmp_path, table, scale):
    """Parsed by the training scripts' own parser (validation included), so a typo fails here, not hours in."""
    runner = _runner(tmp_path, table, scale)
    for task in runner.tasks.values():
        if task.arm.equal_flops_to:
            continue  # its --max-steps comes from finished runs (next test)
        cmd = runner.command(task)
        script = Path(cmd[1])
        assert script.is_file(), script
        cfg = parse_config(cmd[2:], {"framework": script.stem, "output_dir": "x"})
        assert cfg.output_dir == str(task.out) and cfg.seed == 0
        assert cfg.pruning is None or task.arm.flags, task.arm.name  # a method only where the arm asks for one
        other = harness_tables.baseline_of(runner.table, task.arm)
        assert other in {a.name for a in runner.table.arms}


def test_arms_differ_from_their_baseline_only_by_method_flags(tmp_path):
    runner = _runner(tmp_path, "ssl_cnn")
    dense = runner.command(runner.tasks[("simclr_dense", 0)])
    cdg = runner.command(runner.tasks[("simclr_cdg", 0)])
    strip = lambda cmd: [a for a in cmd if "seed0" not in a]  # noqa: E731
    extra = [a for a in strip(cdg) if a not in strip(dense)]
    assert extra == ["--gating", "cdg"]


def test_equal_flops_arm_gets_the_steps_the_pruned_runs_flops_buy(tmp_path):
    runner = _runner(tmp_path, "ssl_cnn")
    for name, summary in (("simsiam_dense", {"dense_train_flops": 100.0 * 40, "steps": 40, "train_flops": 4000.0}),
                          ("simsiam_simwnw", {"dense_train_flops": 4000.0, "steps": 40, "train_flops": 3420.0})):
        out = runner.tasks[(name, 0)].out
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps(summary))
    cmd = runner.command(runner.tasks[("simsiam_dense_eqflops", 0)])
    assert cmd[-2:] == ["--max-steps", "34"]  # 3420 FLOPs / 100 per dense step
    assert runner.tasks[("simsiam_dense_eqflops", 0)].needs == ["simsiam_simwnw", "simsiam_dense"]


def test_a_folder_of_another_command_is_refused_and_the_same_command_reused(tmp_path):
    runner = _runner(tmp_path, "vicreg_dualgate")
    task = runner.tasks[("vicreg_dense", 0)]
    cmd = runner.command(task)
    task.out.mkdir(parents=True)
    (task.out / "harness.json").write_text(json.dumps({"command": cmd, "launcher": [sys.executable]}))
    assert runner.check_folder(task, cmd) == "new"  # killed before its first checkpoint: started again
    (task.out / "checkpoint-15").mkdir()
    assert runner.check_folder(task, cmd) == "resume"  # started, not finished: continued with --resume
    (task.out / "summary.json").write_text("{}")
    assert runner.check_folder(task, cmd) == "done"
    with pytest.raises(SystemExit, match="different command"):
        runner.check_folder(task, cmd + ["--lr", "0.1"])
    stranger = runner.tasks[("vicreg_dualgate", 0)].out
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("a user's file")
    with pytest.raises(SystemExit, match="not empty"):
        runner.check_folder(runner.tasks[("vicreg_dualgate", 0)], cmd)
    assert (stranger / "notes.txt").read_text() == "a user's file"


def test_shared_arms_point_at_the_same_runs(tmp_path):
    sens, ssl = _runner(tmp_path, "sensitivity"), _runner(tmp_path, "ssl_cnn")
    assert sens.tasks[("dense", 0)].out == ssl.tasks[("simsiam_dense", 0)].out
    assert sens.command(sens.tasks[("dense", 0)]) == ssl.command(ssl.tasks[("simsiam_dense", 0)])
    assert sens.command(sens.tasks[("psnr20_b5", 0)]) == ssl.command(ssl.tasks[("simsiam_simwnw", 0)])


def test_noise_verdicts():
    diff, se = harness_stats.difference([30.0, 31.0, 32.0], [29.0, 30.0, 31.0])
    assert diff == pytest.approx(1.0) and harness_stats.verdict(diff, se) == "within noise"
    diff, se = harness_stats.difference([40.0, 40.5, 41.0], [30.0, 30.5, 31.0])
    assert harness_stats.verdict(diff, se) == "higher"
    assert harness_stats.verdict(*harness_stats.difference([1.0], [2.0])) == "one seed: cannot tell"
    assert harness_stats.fmt_ratio([0.9, 1.1, 1.0]) == "1.000 [0.900, 1.100]"
    assert harness_stats.query_sampling_se(50.0, 1000) == pytest.approx(1.58, abs=0.01)


def test_report_rows_from_finished_runs(tmp_path):
    """Per-seed ratios and seed means in the table come from the runs' own summary files."""
    import report as harness_report

    runner = _runner(tmp_path, "vicreg_dualgate", seeds=(0, 1))
    values = {("vicreg_dense", 0): (100.0, 10.0, 30.0), ("vicreg_dense", 1): (100.0, 12.0, 32.0),
              ("vicreg_dualgate", 0): (80.0, 11.0, 29.0), ("vicreg_dualgate", 1): (80.0, 12.0, 31.0)}
    for (arm, seed), (flops, secs, knn) in values.items():
        out = runner.tasks[(arm, seed)].out
        out.mkdir(parents=True)
        (out / "harness.json").write_text(json.dumps({"command": ["python", "training/vicreg.py"], "launcher": []}))
        (out / "summary.json").write_text(json.dumps({
            "steps": 10, "train_flops": flops, "dense_train_flops": 100.0, "wall_time_s": secs, "cpu_time_s": secs,
            "eval": {"knn": {"top1": knn, "num_test": 1000}}, "hardware": "CPU", "git_commit": "abc"}))
        (out / "harness_eval.json").write_text(json.dumps({"linear": {"top1": knn + 1}, "complete": True}))
    path = harness_report.write(runner.table, tmp_path, tmp_path / "results", (0, 1), "cmd", "cpu")
    row = next(l for l in path.read_text().splitlines() if l.startswith("| VICReg dual gate"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2" and cells[4] == "0.800 [0.800, 0.800]"
    assert cells[5] == "1.050 [1.000, 1.100]"  # 11/10 and 12/12
    assert cells[8] == "30.0 ± 1.4" and cells[9].startswith("-1.0") and cells[10] == "within noise"
    assert (tmp_path / "results" / "vicreg_dualgate.png").is_file()
