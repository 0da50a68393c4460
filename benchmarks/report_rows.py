"""Appending a benchmark's markdown rows to a results file, under a comment saying when and where.

Shared by the benchmarks that take ``--out`` (run them as ``python benchmarks/<name>.py``, which puts
this folder on ``sys.path``). The comment records what the rows cannot: the UTC time, the machine and
the torch version, plus anything the caller adds (rounds, weights).
"""

from __future__ import annotations

import datetime
import platform
from typing import Iterable

import torch


def append_rows(path, lines: Iterable[str], note: str = "") -> None:
    """Append ``lines`` to ``path`` after ``<!-- time, machine, torch, note -->``."""
    stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}"
    with open(path, "a") as fh:
        fh.write(f"\n<!-- {stamp}{', ' + note if note else ''} -->\n" + "\n".join(lines) + "\n")
