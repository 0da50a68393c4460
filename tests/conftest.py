import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# Tiny test models run fastest on one thread, and a busy 2-core machine makes multi-threaded OpenMP spin
# 100x slower; subprocesses inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def sample_dir():
    """The CIFAR-10 sample shipped inside the package (train.parquet / test.parquet)."""
    from simwnw_hf.data.datasets import SAMPLE_DIR
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def python():
    return sys.executable
