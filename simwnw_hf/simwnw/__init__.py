"""SimWnW for CNNs (paper §4): block matching and removal masks, waxing-and-waning, masked execution."""
from simwnw_hf.data.views import denormalize  # noqa: F401  ([0, 1] pixels for PSNR)
from .block_matching import (  # noqa: F401
    BlockMatch,
    block_grid,
    counterpart_top_left,
    default_block_size,
    exhaustive_match,
    match_blocks,
    psnr,
    psnr_flops,
    removal_masks,
    search_lattice,
)
