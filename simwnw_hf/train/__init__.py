"""Training: typed config, Accelerate loop, atomic checkpoints, FLOPs metering."""

from __future__ import annotations

import sys


def main(framework: str, argv=None) -> dict:
    """Entry point of ``training/<framework>.py``: parse flags into a TrainConfig and train."""
    from .checkpoint import CheckpointWriteError
    from .config import parse_config
    from .trainer import train

    defaults = {"framework": framework, "output_dir": f"runs/{framework}"}
    if framework == "dino":
        defaults.update(model="simwnw_vit_tiny_patch16_224", image_size=224)
    try:
        cfg = parse_config(argv, defaults, description=f"{framework} self-supervised pre-training")
        return train(cfg)
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError, CheckpointWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
