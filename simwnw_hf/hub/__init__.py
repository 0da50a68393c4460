"""Publish and consume pretrained encoders: export a run to a Hub folder, render its card, upload it.

``export_run`` writes ``model.safetensors`` + ``config.json`` + ``README.md``; ``upload_run`` (used by
``hub_upload.py``) validates and pushes that folder; ``read_training_record`` reads the training record
back from a downloaded ``model.safetensors``.
"""
from .card import render_card
from .export import export_run
from .record import read_training_record, training_record

__all__ = ["export_run", "render_card", "read_training_record", "training_record"]
