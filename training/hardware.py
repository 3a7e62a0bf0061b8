"""What the CPU can do, as the training commands need to know it (the service keeps its own check: it never
imports training)."""

from __future__ import annotations

from pathlib import Path


def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX), read from ``/proc/cpuinfo``."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
