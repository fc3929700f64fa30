"""What the machine can do, for choosing engine settings: bf16 support and the CPU core binding for vLLM.

On a CPU without native bf16 (AVX2-only, e.g. AMD Zen 3) bf16 matmuls are emulated and vLLM runs about 4x
slower than in float32 (measured here: 22 vs 89 tokens/s on SmolLM2-135M); with avx512_bf16 or AMX, bf16 is
the faster one. ``engine.dtype=auto`` and ``sft|dpo.precision=auto`` pick accordingly.

``MAGPIE_EXP_CPU_BF16=1`` (or ``0``) makes the CPU count as having (or lacking) native bf16 whatever its flags
say: the tests use it to run the other precision path on either kind of CPU (bf16 is then emulated, slow but
correct, or fp32 is used where bf16 would be native).
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


CPU_BF16_ENV = "MAGPIE_EXP_CPU_BF16"


def cpu_has_bf16() -> bool:
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return cpu_has_native_bf16()


def cpu_has_native_bf16() -> bool:
    """What the CPU flags say (avx512_bf16 or AMX), whatever ``MAGPIE_EXP_CPU_BF16`` says."""
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
