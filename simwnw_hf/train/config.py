"""One typed config per run; the command line is generated from it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Optional, Tuple

from simwnw_hf.pruning.settings import TOKEN_PRUNING_METHODS, PruningSettings, SimWnWSettings, TokenPruningSettings


@dataclass
class TrainConfig:
    """Everything a pre-training run needs. Flags are the field names with dashes (``--image-size``)."""

    framework: str = "simsiam"  # simclr | simsiam | byol | moco | vicreg | dino
    model: str = "simwnw_resnet18_cifar"  # any timm model name; created with num_classes=0
    dataset: Optional[str] = None  # Hub id, parquet file, folder; None = the CIFAR-10 sample shipped with the package
    split: Optional[str] = None
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    max_samples: Optional[int] = None  # train on a fixed random subset (seed 0) of N images of the split
    image_size: int = 32
    crop_min_scale: float = 0.2
    batch_size: int = 64  # per process
    epochs: int = 1
    max_steps: Optional[int] = None  # stop after this many optimizer steps (overrides epochs when smaller)
    lr: Optional[float] = None  # None: framework default scaled by batch size / 256
    weight_decay: Optional[float] = None
    optimizer: Optional[str] = None  # sgd | adamw; None: sgd for CNNs, adamw for ViTs and DINO
    warmup_steps: int = 0
    seed: int = 0
    num_workers: int = 0
    mixed_precision: Optional[str] = None  # no | bf16 | fp16; None: what `accelerate launch` / config says
    output_dir: str = "runs/simsiam"
    resume: bool = False  # continue from the newest complete checkpoint in output_dir
    save_every: int = 500  # steps between checkpoints (a final one is always written)
    keep_checkpoints: int = 2
    log_every: int = 10
    knn_eval: bool = True  # after training, kNN top-1 on the dataset's test split (when labels exist)
    eval_split: str = "test"
    eval_max_samples: Optional[int] = None
    knn_random_init: bool = False  # also the kNN of the architecture at random init, the baseline in the closing report
    model_args: str = "{}"  # JSON dict of extra timm.create_model kwargs
    framework_args: str = "{}"  # JSON dict of framework kwargs, e.g. '{"hidden_dim": 512, "out_dim": 128}'
    # SimWnW on CNNs (paper §4): remove similar blocks from both views
    simwnw: bool = False
    block_size: Optional[int] = None  # None: 5 @32px, 30 @224px, scaled in between
    psnr_threshold: float = 20.0
    search_window: Optional[int] = None  # None: 2 x block size
    max_rings: int = 2  # waxing: most rings grown per conv input (simwnw_hf/simwnw/masks.py)
    simwnw_executor: str = "lean"  # lean | reference | auto: how the SimWnW pair path runs (same numbers, different time)
    # token pruning on ViTs: simwnw | simprune | evit
    token_pruning: Optional[str] = None
    keep_rate: float = 0.8
    prune_layers: Tuple[int, ...] = (4, 7, 10)  # 0-based: prune at the input of blocks[l]
    # DINO
    n_local_crops: int = 0
    local_crop_size: int = 96
    dino_out_dim: int = 4096

    def __post_init__(self):
        from simwnw_hf.ssl.frameworks import FRAMEWORK_NAMES

        if self.framework not in FRAMEWORK_NAMES:
            raise ValueError(f"unknown framework '{self.framework}'; choose one of {sorted(FRAMEWORK_NAMES)}")
        for name in ("image_size", "batch_size", "epochs", "save_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"--max-steps must be positive, got {self.max_steps}")
        if self.mixed_precision not in (None, "no", "bf16", "fp16"):
            raise ValueError(f"--mixed-precision must be no, bf16 or fp16, got '{self.mixed_precision}'")
        if self.token_pruning not in (None,) + TOKEN_PRUNING_METHODS:
            raise ValueError(f"--token-pruning must be one of {', '.join(TOKEN_PRUNING_METHODS)}, "
                             f"got '{self.token_pruning}'")
        if self.simwnw and self.token_pruning:
            raise ValueError("--simwnw (CNN block removal) and --token-pruning (ViT) are exclusive")
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f"--keep-rate must be in (0, 1], got {self.keep_rate}")
        for name in ("model_args", "framework_args"):
            _json_object(getattr(self, name), "--" + name.replace("_", "-"))
        self.pruning  # validates the pruning settings now, before anything is built

    @property
    def model_kwargs(self) -> dict:
        return _json_object(self.model_args, "--model-args")

    @property
    def framework_kwargs(self) -> dict:
        return _json_object(self.framework_args, "--framework-args")

    @property
    def pruning(self) -> Optional[PruningSettings]:
        """The settings object handed to the backbone's ``configure_pair_pruning``; None when training dense.

        SimWnW's block size and search window are resolved for ``image_size`` here (5 and 10 at 32px),
        so the record stores the values used; a ViT resolves its token search window from its patch size.
        """
        if self.simwnw:
            return SimWnWSettings(block_size=self.block_size, psnr_threshold=self.psnr_threshold,
                                  search_window=self.search_window, max_rings=self.max_rings,
                                  executor=self.simwnw_executor
                                  ).resolve(self.image_size)
        if self.token_pruning:
            return TokenPruningSettings(method=self.token_pruning, psnr_threshold=self.psnr_threshold,
                                        search_window=self.search_window, keep_rate=self.keep_rate,
                                        prune_layers=tuple(self.prune_layers))
        return None

    @property
    def pruning_method(self) -> Optional[str]:
        settings = self.pruning
        return settings.method if settings is not None else None

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from ``run_config.json`` (fields it does not know are ignored: older/newer runs)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        if "prune_layers" in kwargs:
            kwargs["prune_layers"] = tuple(kwargs["prune_layers"])
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _json_object(value, flag: str) -> dict:
    """A JSON-object flag (or an already-parsed dict) as a dict, with a clear error otherwise."""
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} must be a JSON object: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"{flag} must be a JSON object, e.g. '{{\"drop_path_rate\": 0.1}}'")
    return parsed


def _arg_type(annotation):
    """(argparse type, nargs) for a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in typing.get_args(annotation) if a is not type(None)][0]
        return _arg_type(inner)
    if origin in (tuple, Tuple):
        return typing.get_args(annotation)[0], "+"
    return annotation, None


def build_parser(defaults: Optional[dict] = None, description: str = "") -> argparse.ArgumentParser:
    """argparse parser with one flag per ``TrainConfig`` field; ``defaults`` overrides field defaults."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(TrainConfig)
    defaults = defaults or {}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        arg_type, nargs = _arg_type(hints[f.name])
        if arg_type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=arg_type, nargs=nargs, default=default)
    return parser


def parse_config(argv=None, defaults: Optional[dict] = None, description: str = "") -> TrainConfig:
    args = build_parser(defaults, description).parse_args(argv)
    values = vars(args)
    values["prune_layers"] = tuple(values["prune_layers"])
    return TrainConfig(**values)
