"""What the machine can do, for choosing engine settings: bf16 support and the CPU core binding for vLLM.

On a CPU without native bf16 (AVX2-only, e.g. AMD Zen 3) bf16 matmuls are emulated and vLLM runs about 4x
slower than in float32 (measured here: 22 vs 89 tokens/s on SmolLM2-135M); with avx512_bf16 or AMX, bf16 is
the faster one (DESIGN.md). ``engine.dtype=auto`` picks accordingly.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_dtype(dtype: str) -> str:
    """``auto`` -> bfloat16 on CUDA or on a CPU with native bf16, float32 otherwise; other values unchanged."""
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available() or cpu_has_bf16():
        return "bfloat16"
    return "float32"


def bind_cpu_cores(cores: int | None, slot: int | None = None) -> None:
    """Let vLLM-CPU use cores 0..N-1 (default all) with none reserved; measured 1.6x over its 1-core default here.

    ``slot`` k (a Ray actor, ``executor=ray``) binds the k-th group of ``cores`` cores instead, wrapping around the
    machine, and overrides an inherited binding: two engines on one node then never share a core."""
    total = os.cpu_count() or 1
    count = cores or total
    if slot is None:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{count - 1}")
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        return
    first = (slot * count) % total
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"{first}-{min(first + count, total) - 1}"
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
