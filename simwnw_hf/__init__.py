"""simwnw_hf: cheaper self-supervised learning for timm / Hugging Face vision encoders.

Importing the package registers the ``simwnw_*`` models with timm.
"""
from . import models  # noqa: F401  (timm registrations)

__version__ = "0.1.0"
