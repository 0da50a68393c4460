"""Run a table's arms x seeds as training-script subprocesses: resumable, a few at a time.

Every run lives in ``<runs-dir>/<table>/<arm>/seed<k>/``. The exact command is stored there
(``harness.json``) before the run starts; a finished run (``summary.json``) with the same command is not
run again, an interrupted one is continued with ``--resume`` (the trainer's exact resume), and a folder
holding a *different* command is refused, so a changed flag never silently reuses an old result.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from tables import Arm, Table, baseline_of

HARNESS_FILE = "harness.json"
SUMMARY_FILE = "summary.json"
EVAL_FILE = "harness_eval.json"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Task:
    arm: Arm
    seed: int
    out: Path
    needs: List[str] = field(default_factory=list)  # arm names (same seed) that must finish first
    proc: Optional[subprocess.Popen] = None
    stage: str = "pending"  # pending | train | eval | done | failed
    log: Optional[object] = None


def run_dir(runs_dir: Path, table: Table, arm: Arm, seed: int) -> Path:
    table_name, arm_name = arm.shared_with or (table.name, arm.name)
    return runs_dir / table_name / arm_name / f"seed{seed}"


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def equal_flops_steps(source: dict, dense: dict) -> int:
    """Steps of the dense recipe that cost what the ``source`` run cost (its measured training FLOPs)."""
    per_step = dense["dense_train_flops"] / dense["steps"]
    return max(1, round(source["train_flops"] / per_step))


class Runner:
    def __init__(self, table: Table, scale: str, seeds, runs_dir: Path, dataset: str, launcher: List[str],
                 threads: int, jobs: int, extra: List[str], eval_args: List[str]):
        self.table, self.scale, self.seeds = table, scale, list(seeds)
        self.runs_dir, self.dataset, self.launcher = runs_dir, dataset, launcher
        self.threads, self.jobs, self.extra, self.eval_args = threads, jobs, extra, eval_args
        self.tasks: Dict[tuple, Task] = {}
        for seed in self.seeds:  # seed-major: the arms of one seed run close together in time
            for arm in table.arms:
                needs = [arm.equal_flops_to, baseline_of(table, arm)] if arm.equal_flops_to else []
                self.tasks[(arm.name, seed)] = Task(arm, seed, run_dir(runs_dir, table, arm, seed), needs)

    # ------------------------------------------------------------------------------------------ commands
    def command(self, task: Task) -> List[str]:
        script = str(REPO / "training" / f"{task.arm.script}.py")
        cmd = [*self.launcher, script, *self.table.common[self.scale], "--dataset", self.dataset,
               *task.arm.flags, *task.arm.scale_flags.get(self.scale, ()), *self.extra, "--seed", str(task.seed), "--output-dir", str(task.out)]
        if task.arm.equal_flops_to:
            source = read_json(self.tasks[(task.arm.equal_flops_to, task.seed)].out / SUMMARY_FILE)
            dense = read_json(self.tasks[(baseline_of(self.table, task.arm), task.seed)].out / SUMMARY_FILE)
            cmd += ["--max-steps", str(equal_flops_steps(source, dense))]
        return cmd

    def eval_command(self, task: Task) -> List[str]:
        cmd = [sys.executable, str(Path(__file__).with_name("evaluate.py")), str(task.out),
               "--dataset", self.dataset, *self.eval_args]
        if task.arm.convergence:
            cmd.append("--convergence")
        if self.table.linear_probe:
            cmd.append("--linear")
        if self.table.transfer_eval:
            cmd += ["--transfer", *self.table.transfer_eval[self.scale]]
        return cmd

    def check_folder(self, task: Task, cmd: List[str]) -> str:
        """'done', 'resume' or 'new' for ``task``'s folder; a folder of another command is an error."""
        recorded = read_json(task.out / HARNESS_FILE)
        if recorded is not None and recorded["command"][len(recorded["launcher"]):] != cmd[len(self.launcher):]:
            raise SystemExit(f"error: {task.out} holds a run of a different command ({HARNESS_FILE}); delete the "
                             f"folder or pass another --runs-dir")
        if recorded is None and task.out.exists() and any(task.out.iterdir()):
            raise SystemExit(f"error: {task.out} is not empty and has no {HARNESS_FILE}; delete it or pass "
                             f"another --runs-dir")
        if (task.out / SUMMARY_FILE).is_file():
            return "done"
        # killed before its first checkpoint: the trainer refuses --resume there, and starting again is exact
        started = recorded is not None and any(p.name.startswith("checkpoint-") for p in task.out.iterdir())
        return "resume" if started else "new"

    # ---------------------------------------------------------------------------------------- scheduling
    def _env(self) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                   TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env

    def _spawn(self, task: Task, cmd: List[str], log_name: str) -> None:
        task.out.mkdir(parents=True, exist_ok=True)
        task.log = open(task.out / log_name, "a")
        task.proc = subprocess.Popen(cmd, cwd=REPO, env=self._env(), stdout=task.log, stderr=subprocess.STDOUT)

    def _start(self, task: Task) -> None:
        cmd = self.command(task)
        state = self.check_folder(task, cmd)
        if state == "done":
            self._start_eval(task)
            return
        if state == "new":
            task.out.mkdir(parents=True, exist_ok=True)
            for stale in ("metrics.jsonl", "run_config.json"):  # a start killed before its first checkpoint
                (task.out / stale).unlink(missing_ok=True)
            (task.out / HARNESS_FILE).write_text(json.dumps({"command": cmd, "launcher": self.launcher,
                                                             "threads": self.threads}, indent=2))
        else:
            cmd = cmd + ["--resume"]
        print(f"[{time.strftime('%H:%M:%S')}] train {task.arm.name} seed {task.seed}"
              f"{' (resume)' if state == 'resume' else ''}", flush=True)
        task.stage = "train"
        self._spawn(task, cmd, "train.log")

    def needed_evals(self, task: Task) -> List[str]:
        """``harness_eval.json`` keys this table needs from the run (another table sharing it may need others)."""
        keys = ["linear"] if self.table.linear_probe else []
        keys += ["convergence"] if task.arm.convergence else []
        keys += ["transfer_knn"] if self.table.transfer_eval else []
        return keys

    def _start_eval(self, task: Task) -> None:
        done = read_json(task.out / EVAL_FILE) or {}
        if all(key in done for key in self.needed_evals(task)):
            task.stage = "done"
            return
        task.stage = "eval"
        self._spawn(task, self.eval_command(task), "eval.log")

    def _finished(self, task: Task, rc: int) -> None:
        task.log.close()
        if rc != 0:
            log = task.out / ("train.log" if task.stage == "train" else "eval.log")
            print(f"error: {task.arm.name} seed {task.seed}: {task.stage} exited {rc}; see {log}", flush=True)
            task.stage = "failed"
            return
        if task.stage == "train":
            self._start_eval(task)
        else:
            task.stage = "done"

    def ready(self, task: Task) -> bool:
        if task.stage != "pending":
            return False
        return all(self.tasks[(name, task.seed)].stage == "done" for name in task.needs)

    def blocked(self, task: Task) -> bool:
        return any(self.tasks[(name, task.seed)].stage == "failed" for name in task.needs)

    def run(self) -> bool:
        """Run everything not yet done; True when every task finished."""
        while True:
            running = [t for t in self.tasks.values() if t.stage in ("train", "eval")]
            for task in self.tasks.values():
                if task.stage == "pending" and self.blocked(task):
                    task.stage = "failed"
                    print(f"skipped {task.arm.name} seed {task.seed}: an arm it needs failed", flush=True)
            for task in self.tasks.values():
                if len(running) >= self.jobs:
                    break
                if self.ready(task):
                    self._start(task)
                    if task.stage in ("train", "eval"):
                        running.append(task)
            if not running:
                pending = [t for t in self.tasks.values() if t.stage == "pending"]
                if not pending:
                    return all(t.stage == "done" for t in self.tasks.values())
                if not any(self.ready(t) for t in pending):
                    raise RuntimeError(f"arms wait on each other: {[t.arm.name for t in pending]}")
                continue
            pid, status = os.wait()  # whichever run ends first
            for task in running:
                if task.proc is not None and task.proc.pid == pid:
                    task.proc.returncode = os.waitstatus_to_exitcode(status)
                    self._finished(task, task.proc.returncode)


def parse_launcher(text: Optional[str]) -> List[str]:
    """``--launcher "accelerate launch --num_processes 8"`` -> argv before the script; default: this python."""
    return shlex.split(text) if text else [sys.executable]
