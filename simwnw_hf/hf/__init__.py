"""transformers integration: ``SimWnWConfig`` / ``SimWnWModel`` / ``SimWnWForImageClassification``.

Importing this module registers them with ``AutoConfig`` (model type ``"simwnw"``), ``AutoModel`` and
``AutoModelForImageClassification``, so ``AutoModel.from_pretrained(folder)`` works for any folder
written by ``save_pretrained`` once ``simwnw_hf`` is imported. ``save_with_remote_code`` additionally
makes a folder loadable with ``trust_remote_code=True`` without that import.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_simwnw import SimWnWConfig
from .modeling_simwnw import SimWnWForImageClassification, SimWnWModel, SimWnWPreTrainedModel
from .remote_code import save_with_remote_code

__all__ = ["SimWnWConfig", "SimWnWModel", "SimWnWForImageClassification", "SimWnWPreTrainedModel",
           "from_timm", "save_with_remote_code"]

# exist_ok: re-importing (importlib.reload, notebooks) must not fail on our own earlier registration.
AutoConfig.register(SimWnWConfig.model_type, SimWnWConfig, exist_ok=True)
AutoModel.register(SimWnWConfig, SimWnWModel, exist_ok=True)
AutoModelForImageClassification.register(SimWnWConfig, SimWnWForImageClassification, exist_ok=True)

from_timm = SimWnWModel.from_timm
"""``from_timm(timm_model, model_args=None, **config_kwargs) -> SimWnWModel`` (headless wrapper of a trained backbone)."""
