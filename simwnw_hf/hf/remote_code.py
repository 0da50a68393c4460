"""Save a ``simwnw`` model so ``Auto*.from_pretrained(folder, trust_remote_code=True)`` needs no prior import.

``save_pretrained`` writes the weights (safetensors) and ``config.json``; this module adds the two
source files transformers needs (``configuration_simwnw.py``, ``modeling_simwnw.py``, copied verbatim
from this package) and an ``auto_map`` that points the Auto classes at them.

Requirement of the folder: ``modeling_simwnw.py`` imports ``simwnw_hf.models`` for the timm
registrations, so ``simwnw_hf`` must be installed (importable) where the folder is loaded; it does not
have to be imported first. We chose this over a self-contained copy of the timm models: one
definition of each architecture, so a loaded model is exactly the trained one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import configuration_simwnw, modeling_simwnw
from .modeling_simwnw import SimWnWPreTrainedModel

__all__ = ["save_with_remote_code", "AUTO_MAP"]

AUTO_MAP = {
    "AutoConfig": "configuration_simwnw.SimWnWConfig",
    "AutoModel": "modeling_simwnw.SimWnWModel",
    "AutoModelForImageClassification": "modeling_simwnw.SimWnWForImageClassification",
}


def save_with_remote_code(model: SimWnWPreTrainedModel, save_directory: str | Path, **save_kwargs) -> Path:
    """``model.save_pretrained(save_directory)`` plus the code files and ``auto_map`` for ``trust_remote_code``."""
    if not isinstance(model, SimWnWPreTrainedModel):
        raise TypeError(f"save_with_remote_code expects a SimWnWModel / SimWnWForImageClassification, got "
                        f"{type(model).__name__}; wrap a timm model with simwnw_hf.hf.from_timm first")
    save_directory = Path(save_directory)
    model.save_pretrained(save_directory, **save_kwargs)
    for module in (configuration_simwnw, modeling_simwnw):
        shutil.copyfile(module.__file__, save_directory / Path(module.__file__).name)
    config_path = save_directory / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = dict(AUTO_MAP)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return save_directory
