"""One typed config per run; the command line is generated from it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Optional, Tuple

from simwnw_hf.pruning.gating import (GATING_METHODS, BackRazorSettings, CDGSettings, DualGateSettings, GatingSettings,
                                      check_gating_fit)
from simwnw_hf.pruning.settings import (TOKEN_PRUNING_METHODS, PruningSettings, SimWnWSettings, TokenPruningSettings,
                                       parse_token_groups)


MATCH_IN = ("auto", "step", "loader")


@dataclass
class TrainConfig:
    """Everything a pre-training run needs. Flags are the field names with dashes (``--image-size``)."""

    framework: str = "simsiam"  # simclr | simsiam | byol | moco | vicreg | dino
    model: str = "simwnw_resnet18_cifar"  # any timm model name; created with num_classes=0
    dataset: Optional[str] = None  # Hub id, parquet file, folder; None = the CIFAR-10 sample shipped with the package
    split: Optional[str] = None  # split to train on; None: 'train' (or a single-split dataset's only split)
    image_column: Optional[str] = None  # None: found automatically (an Image feature or 'image'/'img')
    label_column: Optional[str] = None  # None: found automatically; only the kNN evaluation reads labels
    max_samples: Optional[int] = None  # train on a fixed random subset (seed 0) of N images of the split
    image_size: int = 32  # side of the square training views in pixels (a ViT is built for it)
    crop_min_scale: float = 0.2  # smallest random-resized-crop area, as a fraction of the image
    batch_size: int = 64  # per process
    epochs: int = 1  # passes over the training images (see --max-steps)
    max_steps: Optional[int] = None  # stop after this many optimizer steps (overrides epochs when smaller)
    lr: Optional[float] = None  # None: framework default scaled by batch size / 256
    weight_decay: Optional[float] = None  # None: the framework's recipe value (SGD) or 0.05 (AdamW)
    optimizer: Optional[str] = None  # sgd | adamw; None: sgd for CNNs, adamw for ViTs and DINO
    warmup_steps: int = 0  # linear lr warm-up steps before the cosine decay
    seed: int = 0  # seeds weights, augmentations and data order (CPU runs are reproducible bit for bit)
    num_workers: int = 0  # DataLoader worker processes decoding and augmenting images
    mixed_precision: Optional[str] = None  # no | bf16 | fp16; None: what `accelerate launch` / config says
    malloc_tuning: bool = True  # CPU runs: glibc malloc keeps freed memory for the next step instead of returning it to the kernel (no page faults re-touching it: 120-210k faults and 0.3-0.6 s of system CPU time less per ResNet-50 224px step, measured); off: glibc's defaults
    output_dir: str = "runs/simsiam"  # run folder: run_config.json, metrics.jsonl, checkpoint-<step>/, summary.json
    resume: bool = False  # continue from the newest complete checkpoint in output_dir
    save_every: int = 500  # steps between checkpoints (a final one is always written)
    keep_checkpoints: int = 2  # newest checkpoints kept, older ones deleted (a ResNet-18 one is ~220 MB)
    log_every: int = 10  # steps between metrics.jsonl lines (the last step is always logged)
    knn_eval: bool = True  # after training, kNN top-1 on --eval-split (checked before the first step)
    eval_split: str = "test"  # kNN query split; a one-split dataset gets a seeded hold-out, left out of training
    eval_max_samples: Optional[int] = None  # kNN queries: a fixed random subset of N images
    knn_random_init: bool = False  # also the kNN of the architecture at random init, the baseline in the closing report
    model_args: str = "{}"  # JSON dict of extra timm.create_model kwargs
    framework_args: str = "{}"  # JSON dict of framework kwargs, e.g. '{"hidden_dim": 512, "out_dim": 128}'
    # SimWnW on CNNs (paper §4): remove similar blocks from both views
    simwnw: bool = False  # remove similar blocks of the two views (simwnw_resnet* models)
    block_size: Optional[int] = None  # None: 5 @32px, 30 @224px, scaled in between
    psnr_threshold: float = 20.0  # dB: blocks of the two views this similar (or more) are removed
    search_window: Optional[int] = None  # None: 2 x block size
    max_rings: int = 2  # waxing: most rings grown per conv input (simwnw_hf/simwnw/masks.py)
    simwnw_executor: str = "fused"  # fused | lean | reference | auto: how the SimWnW pair path runs (same numbers, different time)
    wax_decision: str = "spatial"  # waxing: a ring passes over all channels at once (default, same savings, cheaper) or per channel (the paper's literal reading, 1.13-1.4x the dense step)
    wax_peak: str = "channel"  # waxing: the feature-map PSNR's MAX per channel or over the whole map
    match_in: str = "auto"  # step | loader | auto: where SimWnW's block matching runs; loader = in the --num-workers DataLoader workers, overlapping the step (same plan bit for bit); auto = loader when --num-workers > 0
    # token pruning on ViTs: simwnw | simprune | evit
    token_pruning: Optional[str] = None  # None: dense ViT
    keep_rate: float = 0.8  # simprune / evit: fraction of tokens kept at each pruning layer
    prune_layers: Tuple[int, ...] = (4, 7, 10)  # 0-based: prune at the input of blocks[l]
    token_groups: str = "auto"  # simwnw token removal: how samples of unequal kept length are batched; auto = the chunks of least estimated cost (simwnw_hf/tokens/simwnw.py: split_by_cost), N = N equal chunks per view
    # gating methods (issue 11, docs/GATING.md); at most one of --simwnw, --token-pruning, --gating, --back-razor
    gating: Optional[str] = None  # dualgate (VICReg, simwnw_dualgate_resnet* models) | cdg | scdg (SimCLR, CNN encoders)
    gate_target: float = 0.3  # dualgate: t_d, kept fraction of the gated path's inference FLOPs
    gate_budget_weight: float = 5.0  # dualgate: lambda of the FLOPs budget loss lambda (F_real / F_full - t_d)^2
    gate_bound_weight: float = 1.0  # dualgate: gamma of DGNet's per-layer bound loss, annealed p = exp(-alpha epoch)
    gate_anneal_alpha: Optional[float] = None  # dualgate: alpha of the bound loss annealing; None: 0.02 (the authors', for hundreds of epochs)
    gate_anneal_final: Optional[float] = None  # dualgate: p at the last step instead (alpha scaled to the run, e.g. 0.05 for a short run)
    gate_groups: int = 4  # cdg/scdg: channel groups p; the base path reads 1/p of the input channels (even)
    gate_alpha: float = 2.0  # cdg/scdg: slope of the gate sigmoid (CGNet)
    back_razor: Optional[float] = None  # RHO in (0, 1): every conv keeps only the largest 1-RHO of its input for grad-weight (CNNs, any framework)
    # DINO
    n_local_crops: int = 0  # multi-crop: small local views per image besides the two global ones
    local_crop_size: int = 96  # side of the local crops in pixels
    dino_out_dim: int = 4096  # DINO head output dimension (prototypes)

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
        if self.gating not in (None,) + GATING_METHODS:
            raise ValueError(f"--gating must be one of {', '.join(GATING_METHODS)}, got '{self.gating}'")
        chosen = [flag for flag, on in (("--simwnw", self.simwnw), ("--token-pruning", self.token_pruning),
                                        ("--gating", self.gating), ("--back-razor", self.back_razor is not None)) if on]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} are exclusive: a run uses one pruning/gating method")
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f"--keep-rate must be in (0, 1], got {self.keep_rate}")
        # one spelling per value ("04" -> "4"): run_config.json compares them as text
        self.token_groups = str(parse_token_groups(self.token_groups))
        for name in ("model_args", "framework_args"):
            _json_object(getattr(self, name), "--" + name.replace("_", "-"))
        if self.gate_anneal_alpha is not None and self.gate_anneal_final is not None:
            raise ValueError("--gate-anneal-alpha and --gate-anneal-final are exclusive: give the annealing rate "
                             "per epoch or the p reached at the last step, not both")
        if self.gating != "dualgate" and (self.gate_anneal_alpha is not None or self.gate_anneal_final is not None):
            raise ValueError("--gate-anneal-alpha / --gate-anneal-final anneal dual gating's bound loss; "
                             "add --gating dualgate or drop them")
        if self.match_in not in MATCH_IN:
            raise ValueError(f"--match-in must be one of {', '.join(MATCH_IN)}, got '{self.match_in}'")
        if self.match_in == "loader" and self.num_workers <= 0:
            raise ValueError("--match-in loader needs --num-workers 1 or more: with no worker process the matching "
                             "would run between steps, outside the step time the run reports")
        if self.match_in == "loader" and not self.plans_from_pixels:
            raise ValueError("--match-in loader moves SimWnW's block matching; add --simwnw (CNNs) or "
                             "--token-pruning simwnw (ViTs), or drop --match-in")
        settings = self.pruning  # validates the pruning settings now, before anything is built
        if isinstance(settings, GatingSettings):
            check_gating_fit(settings, self.framework)

    @property
    def plans_from_pixels(self) -> bool:
        """True for the methods whose plan is block matching of the views (SimWnW on CNNs and ViT tokens)."""
        return bool(self.simwnw or self.token_pruning == "simwnw")

    @property
    def matches_in_loader(self) -> bool:
        """True when the DataLoader makes the pair plans (``--match-in``, ``auto`` resolved)."""
        if self.match_in == "auto":
            return self.num_workers > 0 and self.plans_from_pixels
        return self.match_in == "loader"

    @property
    def model_kwargs(self) -> dict:
        return _json_object(self.model_args, "--model-args")

    @property
    def framework_kwargs(self) -> dict:
        return _json_object(self.framework_args, "--framework-args")

    @property
    def pruning(self) -> Optional[PruningSettings]:
        """The settings object of the run's method; None when training dense.

        Pair pruners' settings go to the backbone's ``configure_pair_pruning``; gating settings
        (:mod:`simwnw_hf.pruning.gating`) to :func:`simwnw_hf.gating.training.prepare_backbone`.

        SimWnW's block size and search window are resolved for ``image_size`` here (5 and 10 at 32px),
        so the record stores the values used; a ViT resolves its token search window from its patch size.
        """
        if self.simwnw:
            return SimWnWSettings(block_size=self.block_size, psnr_threshold=self.psnr_threshold,
                                  search_window=self.search_window, max_rings=self.max_rings,
                                  executor=self.simwnw_executor, wax_decision=self.wax_decision,
                                  wax_peak=self.wax_peak
                                  ).resolve(self.image_size)
        if self.token_pruning:
            return TokenPruningSettings(method=self.token_pruning, psnr_threshold=self.psnr_threshold,
                                        search_window=self.search_window, keep_rate=self.keep_rate,
                                        prune_layers=tuple(self.prune_layers),
                                        token_groups=parse_token_groups(self.token_groups))
        if self.gating == "dualgate":
            alpha = {} if self.gate_anneal_alpha is None else {"anneal_alpha": self.gate_anneal_alpha}
            return DualGateSettings(target=self.gate_target, budget_weight=self.gate_budget_weight,
                                    bound_weight=self.gate_bound_weight, anneal_final=self.gate_anneal_final, **alpha)
        if self.gating in ("cdg", "scdg"):
            return CDGSettings(method=self.gating, gate_groups=self.gate_groups, alpha=self.gate_alpha)
        if self.back_razor is not None:
            return BackRazorSettings(rho=self.back_razor)
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


# allowed values shown in --help and checked by argparse (fields whose value is free have none)
_CHOICES = {"optimizer": ("sgd", "adamw"), "mixed_precision": ("no", "bf16", "fp16")}
# other names a flag also answers to: transformers' TrainingArguments spelling of the same setting
_ALIASES = {"keep_checkpoints": ("--save-total-limit",)}


def _choices(name: str):
    from simwnw_hf.pruning.settings import SIMWNW_EXECUTORS, WAX_DECISIONS, WAX_PEAKS
    from simwnw_hf.ssl.frameworks import FRAMEWORK_NAMES

    return {"framework": FRAMEWORK_NAMES, "simwnw_executor": SIMWNW_EXECUTORS, "wax_decision": WAX_DECISIONS,
            "wax_peak": WAX_PEAKS, "match_in": MATCH_IN,
            "token_pruning": TOKEN_PRUNING_METHODS, **_CHOICES}.get(name)


def field_docs() -> Tuple[dict, dict]:
    """({field: its trailing comment}, {field: the section comment above it}) read from this file's source.

    The comments next to the fields of :class:`TrainConfig` are the documentation of its flags; reading
    them with ``tokenize`` + ``ast`` keeps one copy (a string inside a default, such as ``'{"a": 1}'``,
    is never taken for a comment).
    """
    import ast
    import inspect
    import io
    import tokenize

    source = inspect.getsource(TrainConfig)
    comments = {tok.start[0]: (tok.string.lstrip("#").strip(), tok.line.strip().startswith("#"))
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    docs, sections, section, last = {}, {}, "run", 0
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign):
            continue
        above = [text for row, (text, whole) in comments.items() if whole and last < row < node.lineno]
        if above:
            section = above[-1]
        trailing = comments.get(node.end_lineno)
        docs[node.target.id] = trailing[0] if trailing and not trailing[1] else ""
        sections[node.target.id] = section
        last = node.end_lineno
    return docs, sections


def framework_arg_keys(framework: str) -> list:
    """``--framework-args`` keys of ``framework`` with the values the script uses: its constructor's keywords
    after (backbone, num_features), defaults overlaid with what flags set (``config_kwargs``)."""
    import inspect

    from simwnw_hf.ssl.frameworks import FRAMEWORKS

    cls = FRAMEWORKS[framework]
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]
    from_flags = cls.config_kwargs(TrainConfig(framework=framework))  # e.g. DINO's out_dim from --dino-out-dim
    keys = []
    for p in params:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        if p.name in from_flags:  # the value the script passes (a flag of its own sets it)
            keys.append(f"{p.name}={from_flags[p.name]!r}")
        elif p.default is not inspect.Parameter.empty:
            keys.append(f"{p.name}={p.default!r}")
        else:
            keys.append(p.name)
    return keys


def build_parser(defaults: Optional[dict] = None, description: str = "") -> argparse.ArgumentParser:
    """argparse parser with one flag per ``TrainConfig`` field; ``defaults`` overrides field defaults.

    Help text, section groups, defaults and choices come from the config itself (:func:`field_docs`,
    :data:`_CHOICES`); ``--framework-args`` lists the keys of the script's framework.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(TrainConfig)
    defaults = defaults or {}
    docs, sections = field_docs()
    groups = {}
    framework = defaults.get("framework", TrainConfig.framework)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        arg_type, nargs = _arg_type(hints[f.name])
        group = groups.get(sections[f.name]) or groups.setdefault(sections[f.name],
                                                                   parser.add_argument_group(sections[f.name]))
        text = docs[f.name] or f.name.replace("_", " ")
        if f.name == "framework_args":
            text += f"; {framework} takes: {', '.join(framework_arg_keys(framework))}"
        names = (flag,) + _ALIASES.get(f.name, ())
        if arg_type is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            group.add_argument(*names, type=arg_type, nargs=nargs, default=default, choices=_choices(f.name),
                               help=text.replace("%", "%%"))
    return parser


def parse_config(argv=None, defaults: Optional[dict] = None, description: str = "") -> TrainConfig:
    args = build_parser(defaults, description).parse_args(argv)
    values = vars(args)
    values["prune_layers"] = tuple(values["prune_layers"])
    return TrainConfig(**values)
