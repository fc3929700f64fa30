"""The cache keys of every stage, in one table: what names a stage's folder.

A step's folder is ``<paths.outputs>/stages/<stage>/<hash>``; the hash covers the step's payload (the part of
the config that decides what it writes, with its code version from ``VERSIONS``) and the key of its input. The
key of an input is ``<stage>:<hash>`` of the upstream step (from the config alone when ``input`` is null, from
the folder's manifest when ``input`` names a stage folder) or the checksum of a file. So every folder name is
computed here, from the config, without opening the upstream data, and no stage imports another to find its
input. The evaluate stage's keys also cover the evaluated model's files and the benchmark data; they stay
with that stage (``stages/evaluate.py``), under the version given here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from magpie_exp.config import ConfigError, MagpieConfig, TrainSpec, as_plain
from magpie_exp.files import file_digest

# Bump a stage's version when a change alters what it writes for the same config (invalidates its folders).
VERSIONS = {"generate": 1, "tag": 1, "curate": 1, "pair": 1, "train": 1, "evaluate": 1}
# step -> (the stage that runs it, the step whose output it reads)
CHAIN: dict[str, tuple[str, str | None]] = {
    "generate": ("generate", None), "tag": ("tag", "generate"), "curate": ("curate", "tag"),
    "pair": ("pair", "curate"), "sft": ("train", "curate"), "dpo": ("train", "pair"),
}


def config_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def stage_folder(cfg: MagpieConfig, stage: str, payload: dict[str, Any]) -> Path:
    return Path(cfg.paths.outputs) / "stages" / stage / config_hash(payload)


def _engine(cfg: MagpieConfig) -> dict[str, Any]:
    return {"type": cfg.engine.type, "dtype": cfg.engine.dtype}


def generate_payload(cfg: MagpieConfig) -> dict[str, Any]:
    gen = as_plain(cfg.generate)
    for key in ("export", "include_system", "engine_batch", "waves_in_flight", "stream"):  # neither exports nor batching change the records
        gen.pop(key)
    return {"stage": "generate", "stage_version": VERSIONS["generate"], "seed": cfg.seed,
            "generator": as_plain(cfg.generator),
            "response_generator": None if cfg.response_generator is None else as_plain(cfg.response_generator),
            "engine": _engine(cfg), "generate": gen}


def tag_payload(cfg: MagpieConfig, input_key: str) -> dict[str, Any]:
    tag = as_plain(cfg.tag)
    tag.pop("plots")
    tag["taggers"] = sorted(set(tag["taggers"]))
    if "decontam" in tag["taggers"]:  # which evaluation files it compares with
        tag["decontam"]["sources"] = {"data_dir": cfg.evaluation.data_dir,
                                      "lm_eval_local_data": dict(cfg.evaluation.lm_eval.local_data)}
    else:
        tag.pop("decontam")
    return {"stage": "tag", "stage_version": VERSIONS["tag"], "input": input_key, "seed": cfg.seed,
            "engine": _engine(cfg), "tag": tag}


def curate_payload(cfg: MagpieConfig, input_key: str) -> dict[str, Any]:
    curate = as_plain(cfg.curate)
    for key in ("export", "write_rejected", "description"):
        curate.pop(key)
    return {"stage": "curate", "stage_version": VERSIONS["curate"], "input": input_key, "curate": curate}


def pair_payload(cfg: MagpieConfig, input_key: str) -> dict[str, Any]:
    res = cfg.response_generator or cfg.generator
    tag = cfg.tag
    scorer = (as_plain(tag.reward_model) if tag.reward_source == "model"
              else {"judge": as_plain(tag.judge), "explanation_chars": tag.explanation_chars, "max_tokens": tag.judge_max_tokens,
                    "mode": tag.judge_mode, "top_logprobs": tag.judge_top_logprobs, "min_mass": tag.judge_min_mass})
    return {"stage": "pair", "stage_version": VERSIONS["pair"], "input": input_key, "seed": cfg.seed,
            "response_generator": as_plain(res), "engine": _engine(cfg),
            "pair": as_plain(cfg.pair), "reward": {"source": tag.reward_source, **scorer}}


def _spec_key(spec: TrainSpec) -> dict[str, Any]:
    plain = as_plain(spec)
    plain.pop("keep_checkpoints")  # housekeeping: the same model either way
    return plain


def sft_payload(cfg: MagpieConfig, input_key: str) -> dict[str, Any]:
    return {"stage": "train", "trainer": "sft", "stage_version": VERSIONS["train"], "input": input_key, "seed": cfg.seed,
            "sft": _spec_key(cfg.sft)}


def dpo_payload(cfg: MagpieConfig, input_key: str, init_path: str) -> dict[str, Any]:
    dpo = _spec_key(cfg.dpo)
    dpo.pop("init_from")  # the init key says which model, however it was named
    return {"stage": "train", "trainer": "dpo", "stage_version": VERSIONS["train"], "input": input_key,
            "init": config_hash({"init": init_path}), "seed": cfg.seed, "dpo": dpo}


def dpo_init(cfg: MagpieConfig, init: str | None = None) -> str:
    """The model DPO starts from, as the train stage loads it: ``init`` (the pipeline's SFT model) or
    ``dpo.init_from`` resolved, or this config's SFT model (from the curated data, whatever ``input`` says, since a
    DPO config's input is its pairs)."""
    if init or cfg.dpo.init_from:
        from magpie_exp.models import resolve_model

        return resolve_model(init or cfg.dpo.init_from, Path(cfg.paths.cache_dir), key="dpo.init_from")
    return str(trained_model(cfg, "sft").expanduser().resolve())


def input_key(cfg: MagpieConfig, step: str, upstream: str | None = None) -> str:
    """The key of ``step``'s input: ``upstream`` (what the pipeline hands it) or ``input`` when set (a stage folder's
    ``<stage>:<hash>`` from its manifest, or a file's checksum), else the upstream step of this config, from the
    config alone."""
    given = upstream or cfg.input
    if given:
        path = Path(given).expanduser()
        if path.is_dir():
            try:
                manifest = json.loads((path / "manifest.json").read_text())
                return f"{manifest['stage']}:{manifest['config_hash']}"
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"input: '{path}' is not a readable stage folder ({type(exc).__name__}); give a "
                                  "finished stage folder or a JSONL file") from exc
        if not path.is_file():
            raise ConfigError(f"input: '{path}' does not exist; give a finished stage folder or a JSONL file")
        return f"{'pairs' if step == 'dpo' else 'file'}:{file_digest(path, 16)}"
    upstream = CHAIN[step][1]
    if upstream is None:
        raise ConfigError(f"{step} reads no input")
    return f"{CHAIN[upstream][0]}:{config_hash(payload(cfg, upstream))}"


def payload(cfg: MagpieConfig, step: str, key: str | None = None, upstream: str | None = None,
            init: str | None = None) -> dict[str, Any]:
    """``step``'s payload; ``key`` is the key of the input it reads (else computed by ``input_key`` from
    ``upstream``, ``input`` or the config), ``init`` the model DPO starts from (else ``dpo_init``)."""
    if step == "generate":
        return generate_payload(cfg)
    key = input_key(cfg, step, upstream) if key is None else key
    if step == "dpo":
        return dpo_payload(cfg, key, dpo_init(cfg, init))
    return {"tag": tag_payload, "curate": curate_payload, "pair": pair_payload, "sft": sft_payload}[step](cfg, key)


def folder(cfg: MagpieConfig, step: str, key: str | None = None, upstream: str | None = None,
           init: str | None = None) -> Path:
    """The folder ``step`` (generate, tag, curate, pair, sft or dpo) writes for ``cfg`` (see ``payload``)."""
    return stage_folder(cfg, CHAIN[step][0], payload(cfg, step, key, upstream, init))


def trained_model(cfg: MagpieConfig, trainer: str) -> Path:
    """The model folder this config's ``trainer`` (sft or dpo) writes; SFT trains on this config's curated data
    whatever ``input`` says."""
    if trainer == "sft":
        import dataclasses

        return folder(dataclasses.replace(cfg, input=None), "sft") / "model"
    return folder(cfg, "dpo") / "model"
