"""simwnw_hf: cheaper self-supervised learning for timm / Hugging Face vision encoders.

Importing the package registers the ``simwnw_*`` models with timm and ``SimWnWConfig`` /
``SimWnWModel`` / ``SimWnWForImageClassification`` with transformers' Auto classes.
"""
from . import models  # noqa: F401  (timm registrations)
from . import hf  # noqa: F401  (transformers Auto registrations)

__version__ = "0.1.0"
