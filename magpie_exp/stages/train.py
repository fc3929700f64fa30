"""The train stage: TRL SFT on the curated conversations, then TRL DPO on the preference pairs.

    magpie-exp stage=train trainer=sft                       # SFT the base model on this config's curated data
    magpie-exp stage=train trainer=dpo                       # DPO from this config's SFT output on its pairs
    magpie-exp stage=train trainer=sft sft=llama3-8b-paper   # the paper's recipe (GPU; see recipes/)
    accelerate launch --config_file recipes/accelerate/fsdp.yaml -m magpie_exp.cli stage=train sft=llama3-8b-paper

TRL's ``SFTConfig`` / ``DPOConfig`` are built from the Hydra config (``sft.*`` / ``dpo.*``, anything else via
``sft.extra``) and the trainers are called as they are. A base model gets a chat template (``sft.chat_template``:
Llama-3's on Llama-3-8B-Base as in the paper, Gemma's turn format on Gemma-3-270M) with ``{% generation %}``
markers, so the loss covers assistant turns only; its end-of-turn token becomes the saved model's stop token.
Checkpoints go to ``<stage>/checkpoints``: a killed run resumes from the last one.

Precision (``training/precision.py``): the trained weights and Adam's moments are fp32 under every setting;
``precision`` is the compute dtype (TRL's autocast), never the storage of what is trained.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from magpie_exp import __version__
from magpie_exp.config import ConfigError, DPOSpec, MagpieConfig, SFTSpec, TrainSpec, need
from magpie_exp.models import resolve_model
from magpie_exp.records import training_messages
from magpie_exp.shards import MANIFEST, ShardStore, wait_for_writer
from magpie_exp.stages.common import StageResult, check_free_space, check_writable, finish, finished, open_input
from magpie_exp.stages.keys import config_hash, dpo_init, folder, payload, stage_folder
from magpie_exp.training.precision import (DTYPES, check_master_weights, load_dtype, precision, precision_facts, save_dtype,
                                          under_zero3)
from magpie_exp.training.templates import CHAT_TEMPLATES, check_eot, prepare_tokenizer
from magpie_exp.training.weights import cast_and_compare, warn_if_rounded_away

log = logging.getLogger(__name__)

def _spec(cfg: MagpieConfig) -> tuple[str, SFTSpec | DPOSpec]:
    return cfg.trainer, (cfg.sft if cfg.trainer == "sft" else cfg.dpo)


def load_sft_rows(cfg: MagpieConfig, upstream: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    source = open_input(cfg, "sft", upstream)
    rows = [{"messages": training_messages(r, cfg.generate.include_system, cfg.sft.include_reasoning)}
            for r in source.records()]
    return source.key, rows


def load_dpo_rows(cfg: MagpieConfig, upstream: str | None = None) -> list[dict[str, Any]]:
    """The preference pairs DPO reads (their key, which names the DPO folder, is ``keys.input_key``)."""
    given = upstream or cfg.input
    path = Path(given).expanduser() if given else None
    if path is None:
        path = folder(cfg, "pair") / "export" / "pairs.jsonl"
        hint = "run `magpie-exp stage=pair` with the same config first, or set input=<pairs.jsonl>"
    else:
        path = path / "export" / "pairs.jsonl" if path.is_dir() else path
        hint = "give a pairs JSONL (prompt / chosen / rejected message lists) or a pair stage folder"
    if not path.exists():
        raise ConfigError(f"input: '{path}' does not exist; {hint}")
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            row = json.loads(line)
            if not all(isinstance(row.get(k), list) and row[k] for k in ("prompt", "chosen", "rejected")):
                raise ConfigError(f"input: {path} line {number} is not a conversational preference pair "
                                  "(prompt, chosen, rejected message lists); point input at the pair stage's pairs.jsonl")
            rows.append({k: row[k] for k in ("prompt", "chosen", "rejected")})
    return rows


@contextlib.contextmanager
def _random_dataset_fingerprints() -> Iterator[None]:
    """Skip ``datasets``' hashing of every ``map`` call's arguments while TRL prepares its data.

    The hash names on-disk cache files; it pickles the tokenizer each time, about 30 s per SFT run for Gemma's
    262k-token vocabulary. These datasets live in memory and the stage folder is the cache, so a random
    fingerprint (what ``datasets`` itself falls back to when hashing fails) loses nothing.
    """
    import datasets.arrow_dataset as arrow
    from datasets import fingerprint

    saved = arrow.update_fingerprint, fingerprint.update_fingerprint

    def random_fingerprint(*args: Any, **kwargs: Any) -> str:
        return fingerprint.generate_random_fingerprint()

    arrow.update_fingerprint = fingerprint.update_fingerprint = random_fingerprint
    try:
        yield
    finally:
        arrow.update_fingerprint, fingerprint.update_fingerprint = saved


def _report_to() -> list[str]:
    """TRL logs its curves into the tracker's W&B run when one is open (magpie_exp.tracking), else nowhere."""
    import sys

    wandb = sys.modules.get("wandb")
    return ["wandb"] if wandb is not None and getattr(wandb, "run", None) is not None else []


def _training_args(spec: TrainSpec, key: str, out: Path, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    import torch

    prec = precision(spec, key)
    args = dict(
        output_dir=str(out / "checkpoints"), learning_rate=spec.learning_rate, num_train_epochs=spec.num_train_epochs,
        max_steps=spec.max_steps, per_device_train_batch_size=spec.per_device_train_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps, max_length=spec.max_length,
        lr_scheduler_type=spec.lr_scheduler_type, warmup_steps=spec.warmup_steps, weight_decay=spec.weight_decay,
        gradient_checkpointing=spec.gradient_checkpointing, logging_steps=spec.logging_steps,
        save_strategy="steps", save_steps=spec.save_steps, save_total_limit=spec.save_total_limit, seed=seed,
        report_to=_report_to(), bf16=prec == "bf16", fp16=prec == "fp16", use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    args.update(extra)
    args.update(spec.extra)
    return args


def _lora(spec: TrainSpec) -> Any:
    if not spec.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                      target_modules=spec.lora.target_modules, task_type="CAUSAL_LM")


def _load_model(model_path: str, spec: TrainSpec, key: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": load_dtype(spec, key, under_zero3())}
    if spec.lora.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None and not spec.lora.load_in_4bit:
        model.hf_quantizer = None
    return model


def _reference_model(model_path: str, spec: DPOSpec) -> Any:
    """DPO's reference model, only read: in the compute dtype (half the memory of an fp32 copy under bf16). None
    where TRL needs none: reference log-probs precomputed, or LoRA (the adapter is switched off instead)."""
    if spec.precompute_ref_log_probs or spec.lora.enabled:
        return None
    import torch
    from transformers import AutoModelForCausalLM

    prec = precision(spec, "dpo")
    dtype = getattr(torch, DTYPES[prec]) if prec in DTYPES else torch.float32
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()


def _parameter_count(model_path: str) -> int:
    """Parameters of a local safetensors model, from the file headers (no weights read); 0 if unknown."""
    from safetensors import safe_open

    count = 0
    for path in Path(model_path).glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                count += math.prod(handle.get_slice(name).get_shape())
    return count


def _check_disk(out: Path, model_path: str, spec: TrainSpec, key: str) -> None:
    """The saved model (written in fp32, then cast) plus, unless checkpoints are off, ``save_total_limit``
    checkpoints holding the fp32 weights and Adam's two fp32 moments (full fine-tuning; LoRA's are small) must fit
    under ``paths.outputs`` before training."""
    params = _parameter_count(model_path)
    if not params:
        return  # not a local safetensors folder: transformers reports what is wrong with it
    saved = params * (4 + save_dtype(spec).itemsize)  # written in fp32, then cast file by file to save_dtype
    if spec.extra.get("save_strategy", "steps") == "no" or spec.lora.enabled:
        checkpoints = 0
    else:
        checkpoints = max(spec.save_total_limit, 1) * 12 * params  # fp32 weights and Adam's two fp32 moments
    what = f"{key} ({saved / 1e9:.1f} GB model" + (f" + {checkpoints / 1e9:.1f} GB of checkpoints)" if checkpoints else ")")
    check_free_space(out.parent, int(saved + checkpoints), "paths.outputs", what,
                     f"turn checkpoints off ({key}.extra.save_strategy=no) or use LoRA ({key}.lora.enabled=true)")


def _callbacks() -> list[Any]:
    """The fault drills' ``train.checkpoint`` failpoint, when one is set (see magpie_exp.faults)."""
    import os

    from magpie_exp.faults import ENV, failpoint

    if not os.environ.get(ENV, "").startswith("train."):
        return []
    from transformers import TrainerCallback

    class Failpoint(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            failpoint("train.checkpoint")

    return [Failpoint()]


def _last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _is_writer() -> bool:
    """Whether this process writes the train folder: rank 0 of a multi-process run (torchrun and accelerate set
    RANK), or the only process. The other ranks train beside it and never lock the folder (they would wait for
    rank 0 while rank 0 waits for them)."""
    return os.environ.get("RANK", "0") == "0"


def _trained(out: Path) -> StageResult | None:
    """The train folder's result if it is finished: a read-only look (rank 0 first waits for a sweep member that
    is training this same model)."""
    if _is_writer():
        wait_for_writer(out)
    return finished(ShardStore.open(out), {"model": out / "model"}) if (out / MANIFEST).exists() else None


def _open_folder(out: Path, run_payload: dict[str, Any]) -> tuple[ShardStore | None, StageResult | None]:
    """Rank 0's store of the train folder (held until it is finished; None on the other ranks), and the folder's
    result if another job finished it meanwhile."""
    check_writable(out, "paths.outputs")  # every rank: each checks the disk and writes checkpoints under it
    if not _is_writer():
        return None, None
    store = ShardStore(out, "train", config_hash(run_payload), run_payload)
    return store, finished(store, {"model": out / "model"})


def _finish(trainer: Any, tok: Any, eot: str | None, store: ShardStore | None, stats: dict[str, Any], spec: TrainSpec,
            key: str, base_path: str) -> None:
    """Save the model with its chat template, and make its end-of-turn token a stop token.

    A LoRA run saves its adapter to ``adapter/`` and the base model with the adapter merged in to ``model/``, so
    that every later step (DPO, evaluation, vLLM) loads a plain model folder. The folder is then marked finished
    (``common.finish``: stats, then the manifest's flag). Checkpoints exist only to resume a killed run, so they
    go once the model is saved unless ``keep_checkpoints`` (a full-weight checkpoint holds the optimizer state
    too: three times the model, 3 GB for Gemma-3-270M in fp32, ~100 GB for an 8B model)."""
    out = Path(trainer.args.output_dir).parent
    model_dir = out / "model"
    lora = spec.lora.enabled
    trainer.save_model(str(out / "adapter" if lora else model_dir))  # on every rank: FSDP gathers the weights
    if not trainer.is_world_process_zero():
        return
    if lora:
        _merge_adapter(out / "adapter", base_path, model_dir)
    stats["weights"] = cast_and_compare(model_dir, Path(base_path), save_dtype(spec))
    warn_if_rounded_away(stats["weights"], key)
    tok.save_pretrained(str(model_dir))
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        gen = GenerationConfig()
    stops = [tok.eos_token_id] + ([tok.convert_tokens_to_ids(eot)] if eot else [])
    gen.eos_token_id = list(dict.fromkeys(i for i in stops if i is not None))
    gen.pad_token_id = tok.pad_token_id
    gen.save_pretrained(str(model_dir))
    if store is None:  # only rank 0 gets here (is_world_process_zero), and rank 0 opened the folder's store
        raise RuntimeError(f"rank 0 has no store for {out}: RANK={os.environ.get('RANK')!r} disagrees with the trainer")
    finish(store, stats, {"model": model_dir}, records=stats["rows"])
    if not spec.keep_checkpoints and (out / "checkpoints").is_dir():
        shutil.rmtree(out / "checkpoints")


def _merge_adapter(adapter: Path, base_path: str, model_dir: Path) -> None:
    """The base model (unquantized, also after QLoRA) with the trained adapter merged into its weights, in fp32
    (one rounding, to ``save_dtype``, comes after)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(str(model_dir))


def _stats(trainer: Any, spec: TrainSpec, seconds: float, rows: int, extra: dict[str, Any]) -> dict[str, Any]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    steps = trainer.state.global_step
    return {"trainer": type(trainer).__name__, "recipe": spec.name, "rows": rows, "steps": steps,
            "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(steps, 1), 2),
            "loss": [{"step": h["step"], "loss": h["loss"]} for h in history],
            "final_loss": history[-1]["loss"] if history else None, "log_history": trainer.state.log_history,
            "world_size": trainer.args.world_size, "precision": precision_facts(trainer), "code_version": __version__,
            **extra}


def run_sft(cfg: MagpieConfig, upstream: str | None = None) -> StageResult:
    """SFT ``sft.base_model`` on ``upstream`` (else ``input``, else this config's curated data)."""
    from trl import SFTConfig, SFTTrainer

    spec = cfg.sft
    key_in, rows = load_sft_rows(cfg, upstream)
    if not rows:
        raise ConfigError("sft: the curated dataset is empty; loosen the curate recipe (curate=none) or generate more")
    run_payload = payload(cfg, "sft", key_in)
    out = stage_folder(cfg, "train", run_payload)
    if hit := _trained(out):
        return hit
    store, hit = _open_folder(out, run_payload)
    if hit:
        return hit
    model_path = resolve_model(spec.base_model, Path(cfg.paths.cache_dir), key="sft.base_model")
    _check_disk(out, model_path, spec, "sft")
    tok, eot = prepare_tokenizer(model_path, spec, "sft")
    check_eot(tok, eot, "sft")
    import datasets

    args = SFTConfig(**_training_args(spec, "sft", out, cfg.seed, dict(
        packing=spec.packing, assistant_only_loss=spec.assistant_only_loss, eos_token=eot or tok.eos_token)))
    with _random_dataset_fingerprints():
        trainer = SFTTrainer(model=_load_model(model_path, spec, "sft"), args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tok, peft_config=_lora(spec), callbacks=_callbacks())
    check_master_weights(trainer, "sft")
    resume = _last_checkpoint(out)
    if resume:
        log.info("resuming SFT from %s", resume)
    start = time.perf_counter()
    with _random_dataset_fingerprints():
        trainer.train(resume_from_checkpoint=resume)
    stats = _stats(trainer, spec, time.perf_counter() - start, len(rows),
                   {"base_model": spec.base_model, "chat_template": spec.chat_template, "resumed_from": resume})
    _finish(trainer, tok, eot, store, stats, spec, "sft", model_path)
    return StageResult(out, stats, {"model": str(out / "model")}, False)


def _dpo_start(cfg: MagpieConfig, upstream: str | None, init: str | None) -> tuple[dict[str, Any], str]:
    """The DPO run's payload (which names its folder) and the model it starts from (which must exist)."""
    start = dpo_init(cfg, init)
    if not (init or cfg.dpo.init_from) and not (Path(start) / "config.json").exists():
        raise ConfigError(f"dpo.init_from is null and this config's SFT model '{start}' does not exist; run `magpie-exp "
                          "stage=train trainer=sft` with the same config first, or set dpo.init_from=<model folder>")
    return payload(cfg, "dpo", upstream=upstream, init=start), start


def run_dpo(cfg: MagpieConfig, upstream: str | None = None, init: str | None = None) -> StageResult:
    """DPO from ``init`` (else ``dpo.init_from``, else this config's SFT model) on ``upstream``'s pairs (else
    ``input``, else this config's pair folder)."""
    from trl import DPOConfig, DPOTrainer

    spec = cfg.dpo
    run_payload, init_path = _dpo_start(cfg, upstream, init)
    out = stage_folder(cfg, "train", run_payload)
    if hit := _trained(out):
        return hit
    rows = load_dpo_rows(cfg, upstream)
    if not rows:
        raise ConfigError("dpo: no preference pairs; run the pair stage (or lower pair.min_margin)")
    store, hit = _open_folder(out, run_payload)
    if hit:
        return hit
    _check_disk(out, init_path, spec, "dpo")
    tok, _ = prepare_tokenizer(init_path, spec, "dpo")
    eot = next((e for t, e in CHAT_TEMPLATES.values() if t == tok.chat_template), None)
    import datasets

    args = DPOConfig(**_training_args(spec, "dpo", out, cfg.seed, dict(
        beta=spec.beta, loss_type=[spec.loss_type], precompute_ref_log_probs=spec.precompute_ref_log_probs)))
    with _random_dataset_fingerprints():
        trainer = DPOTrainer(model=_load_model(init_path, spec, "dpo"), ref_model=_reference_model(init_path, spec), args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tok, peft_config=_lora(spec), callbacks=_callbacks())
    check_master_weights(trainer, "dpo")
    resume = _last_checkpoint(out)
    start = time.perf_counter()
    with _random_dataset_fingerprints():
        trainer.train(resume_from_checkpoint=resume)
    stats = _stats(trainer, spec, time.perf_counter() - start, len(rows), {"init_from": init_path, "resumed_from": resume})
    _finish(trainer, tok, eot, store, stats, spec, "dpo", init_path)
    return StageResult(out, stats, {"model": str(out / "model")}, False)


def run_train(cfg: MagpieConfig) -> StageResult:
    return run_sft(cfg) if cfg.trainer == "sft" else run_dpo(cfg)


def check_train_config(cfg: MagpieConfig) -> None:
    need(cfg.trainer in ("sft", "dpo"), f"trainer must be sft or dpo; got {cfg.trainer!r}")
    for key, spec in (("sft", cfg.sft), ("dpo", cfg.dpo)):
        need(spec.learning_rate > 0, f"{key}.learning_rate must be > 0; got {spec.learning_rate}")
        need(spec.max_steps > 0 or spec.num_train_epochs > 0, f"{key}: set {key}.max_steps > 0 or {key}.num_train_epochs > 0")
        need(spec.per_device_train_batch_size >= 1, f"{key}.per_device_train_batch_size must be >= 1; got {spec.per_device_train_batch_size}")
        need(spec.gradient_accumulation_steps >= 1, f"{key}.gradient_accumulation_steps must be >= 1; got {spec.gradient_accumulation_steps}")
        need(spec.max_length >= 16, f"{key}.max_length must be >= 16; got {spec.max_length}")
        need(spec.precision in ("auto", "bf16", "fp16", "fp32"), f"{key}.precision must be auto, bf16, fp16 or fp32; got {spec.precision!r}")
        need(spec.save_dtype in DTYPES, f"{key}.save_dtype must be fp32, bf16 or fp16; got {spec.save_dtype!r}")
        need(spec.save_steps >= 1, f"{key}.save_steps must be >= 1; got {spec.save_steps}")
        need(not spec.lora.load_in_4bit or spec.lora.enabled, f"{key}.lora.load_in_4bit (QLoRA) needs {key}.lora.enabled=true")
    need(cfg.sft.chat_template is None or cfg.sft.chat_template in CHAT_TEMPLATES or cfg.sft.chat_template.endswith(".jinja"),
         f"sft.chat_template must be one of {', '.join(CHAT_TEMPLATES)}, a .jinja path or null; got {cfg.sft.chat_template!r}")
    need(cfg.dpo.beta > 0, f"dpo.beta must be > 0; got {cfg.dpo.beta}")
    spec = cfg.sft if cfg.trainer == "sft" else cfg.dpo
    if cfg.stage == "train":
        precision(spec, cfg.trainer)  # bf16 asked on hardware without it: say so before anything loads

