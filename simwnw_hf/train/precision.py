"""Whether the device runs a ``--mixed-precision`` mode fast, and a one-line warning when it does not.

bf16 autocast on a CPU without native bf16 instructions (x86 ``avx512_bf16`` / ``amx_bf16``, Arm
``bf16``) emulates every bf16 matmul and convolution: a CIFAR step measured ~40 s instead of ~6.5 s in
fp32 on an AVX2-only machine (issue 14). The run is still correct, so this warns instead of refusing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["BF16_CPU_FLAGS", "cpu_flags", "cpu_has_native_bf16", "check_mixed_precision"]

logger = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 flags, then Arm's ``Features: ... bf16``
CPUINFO = "/proc/cpuinfo"  # read when no file is passed (a module attribute, so tests can point it elsewhere)


def cpu_flags(cpuinfo: Union[str, Path, None] = None) -> Optional[set]:
    """The CPU feature flags listed in ``cpuinfo`` (``flags`` on x86, ``Features`` on Arm); None if unreadable."""
    try:
        text = Path(cpuinfo or CPUINFO).read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_has_native_bf16(cpuinfo: Union[str, Path, None] = None) -> Optional[bool]:
    """True / False from the CPU flags; None when they cannot be read (not Linux)."""
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return None
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def check_mixed_precision(mode: Optional[str], device: Union[str, torch.device],
                          cpuinfo: Union[str, Path, None] = None) -> Optional[str]:
    """Warn (one log line) and return the warning when ``mode`` will run slowly on ``device``; else None.

    Call once before training starts, with the ``--mixed-precision`` value and the device the model runs on.
    """
    if mode not in ("bf16", "fp16"):
        return None
    cpuinfo = cpuinfo or CPUINFO
    device = torch.device(device)
    message = None
    if device.type == "cpu" and mode == "bf16" and cpu_has_native_bf16(cpuinfo) is False:
        message = ("--mixed-precision bf16 on a CPU without native bf16 (no avx512_bf16 / amx_bf16 flag in "
                   f"{cpuinfo}): every step is emulated and can be several times slower than fp32; "
                   "pass --mixed-precision no")
    elif device.type == "cuda" and mode == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        message = (f"--mixed-precision bf16 on {torch.cuda.get_device_name(device)}, which has no native bf16: "
                   "pass --mixed-precision fp16 or no")
    if message:
        logger.warning(message)
    return message
