import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
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
