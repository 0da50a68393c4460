"""SimWnW for CNNs (paper §4): block matching and removal masks, waxing-and-waning, masked execution mechanisms
(reference ``masked_exec``, lean ``lean_exec``, 1x1 skipping ``skip_exec``).

The ResNet walkers that apply them live in ``simwnw_hf.models.resnet_pair`` (model-family adapter).
"""
from simwnw_hf.data.views import denormalize  # noqa: F401  ([0, 1] pixels for PSNR)
from .block_matching import (  # noqa: F401
    BlockMatch,
    block_grid,
    counterpart_top_left,
    default_block_size,
    exhaustive_match,
    match_blocks,
    match_pixels,
    psnr,
    psnr_flops,
    removal_masks,
    search_lattice,
)
from .masks import wane, wax, block_correspondence, pair_expander  # noqa: F401  (§4.2)
from .masked_exec import masked_batch_norm, masked_conv2d  # noqa: F401
from .lean_exec import lean_batch_norm, lean_conv2d, wax_compact, wax_spatial_compact  # noqa: F401
from .skip_exec import SkipCostModel, skip_conv1x1  # noqa: F401  (the auto executor's 1x1 skipping)
from .flops import dense_model_flops, trace_flops  # noqa: F401
