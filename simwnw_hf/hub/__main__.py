"""``python -m simwnw_hf.hub RUN_DIR OUT_DIR [--baseline-run DIR] [--force]``: export a run (no upload)."""
from .export import main

raise SystemExit(main())
