"""Precision. ``precision`` is the compute dtype, never the storage of what is trained: the trained weights (the
optimizer's master copy) and Adam's moments are fp32 under every setting, and bf16/fp16 is TRL's autocast
(``bf16=True`` on an fp32 model), as transformers and TRL intend. Training bf16 weights directly would round
away every update below half a unit in the last place (bf16 keeps 8 significant bits: about 1e-4 on a weight of
0.02, 4e-3 on a norm weight near 1), so most SFT updates at the paper's lr 2e-5 and nearly all DPO updates at
5e-7 would be lost while the loss still fell. Frozen weights may be narrower: a LoRA base is loaded in the
compute dtype (PEFT keeps the adapters fp32), a QLoRA base in 4 bits. The saved model's dtype is a separate
choice (``save_dtype``); ``stats.json`` records the dtypes actually found on the trained parameters and in the
optimizer state, and how much of what training changed survives rounding to ``save_dtype``.
"""

from __future__ import annotations

from typing import Any

from magpie_exp.config import ConfigError, TrainSpec


def has_native_bf16() -> bool:
    import torch

    from magpie_exp.engines.hardware import cpu_has_bf16

    return (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) or (not torch.cuda.is_available() and cpu_has_bf16())


def precision(spec: TrainSpec, key: str) -> str:
    if spec.precision == "auto":
        return "bf16" if has_native_bf16() else "fp32"
    if spec.precision == "bf16" and not has_native_bf16():
        raise ConfigError(f"{key}.precision=bf16 but this machine has no native bf16 (no GPU, and the CPU lacks "
                          f"avx512_bf16/AMX, so it would run emulated and ~4x slower); use {key}.precision=auto or fp32")
    if spec.precision == "fp16" and not __import__("torch").cuda.is_available():
        raise ConfigError(f"{key}.precision=fp16 needs a GPU; use {key}.precision=auto or fp32")
    return spec.precision


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def load_dtype(spec: TrainSpec, key: str, zero3: bool = False) -> Any:
    """The torch dtype the trained model is loaded in: fp32 wherever its weights are trained (they are the master
    copy), the compute dtype for a frozen LoRA base (PEFT upcasts the adapters to fp32), except under DeepSpeed
    ZeRO-3, where TRL keeps LoRA adapters in the base model's dtype, so the base stays fp32 there too."""
    import torch

    prec = precision(spec, key)
    if spec.lora.enabled and not zero3 and prec in ("bf16", "fp16"):
        return getattr(torch, DTYPES[prec])
    return torch.float32


def save_dtype(spec: TrainSpec) -> Any:
    import torch

    return getattr(torch, DTYPES[spec.save_dtype])


def under_zero3() -> bool:
    """Launched by accelerate with DeepSpeed ZeRO stage 3 (recipes/accelerate/zero3.yaml)."""
    import os

    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and \
        os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "") == "3"


def check_master_weights(trainer: Any, key: str) -> None:
    """Refuse to train weights that are not fp32: an update below half their last place would be rounded away."""
    import torch

    narrow = sorted({str(p.dtype).removeprefix("torch.") for p in trainer.model.parameters()
                     if p.requires_grad and p.dtype != torch.float32})
    if narrow:
        raise ConfigError(f"{key}: the trainable weights are {', '.join(narrow)}, not float32; updates smaller than "
                          "their rounding step would be lost. Load the model in float32 (remove a dtype from "
                          f"{key}.extra) and keep the compute dtype in {key}.precision")


def precision_facts(trainer: Any) -> dict[str, Any]:
    """What the trained run actually held, read off the model and the optimizer (not inferred from settings)."""
    import torch

    def names(dtypes: set[Any]) -> list[str]:
        return sorted(str(d).removeprefix("torch.") for d in dtypes)

    args = trainer.args
    facts: dict[str, Any] = {"autocast": "bf16" if args.bf16 else "fp16" if args.fp16 else None}
    try:  # after hours of training, a fact that cannot be read is recorded as such, never a crash
        facts["trainable_dtypes"] = names({p.dtype for p in trainer.model.parameters() if p.requires_grad})
        facts["frozen_dtypes"] = names({p.dtype for p in trainer.model.parameters() if not p.requires_grad})
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        state: set[Any] = set()
        for values in (optimizer.state.values() if optimizer is not None else []):
            state |= {v.dtype for k, v in values.items() if k != "step" and isinstance(v, torch.Tensor)}
        facts["optimizer_state_dtypes"] = names(state)
    except Exception as exc:  # noqa: BLE001 - e.g. an optimizer wrapper without a readable state
        facts["unreadable"] = f"{type(exc).__name__}: {exc}"[:200]
    if getattr(trainer, "is_deepspeed_enabled", False):  # the model copy is 16-bit; the masters live in ZeRO
        facts["master_weights"] = "fp32 partitions in DeepSpeed's optimizer"
    return facts
