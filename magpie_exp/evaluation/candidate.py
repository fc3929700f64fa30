"""The evaluated model: what ``evaluation.model`` names (this config's trained model, ``generator``, a folder,
``embedded:<name>`` or a hub id), its label, and its cache identity (a folder's files fingerprinted)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from magpie_exp.config import ConfigError, EvaluationConfig, GeneratorConfig, ResponseSampling


@dataclass(frozen=True)
class Candidate:
    label: str
    spec: str  # what evaluation.model resolved to (folder, embedded:<name> or hub id)
    key: str  # identity for the cache: the spec plus a fingerprint of a folder's files


def _fingerprint(folder: Path) -> str:
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def resolve_candidate(ev: EvaluationConfig, generator: GeneratorConfig, trainer: str, trained: Path | None,
                      model: str | None = None, label: str | None = None) -> Candidate:
    """The model to evaluate: ``model`` (the pipeline's choice) or ``evaluation.model``; null means ``trained``,
    this config's ``trainer`` model folder. ``label`` (else ``evaluation.label``) names it in tables; "generator"
    is ``generator``."""
    model = ev.model if model is None else model
    label = ev.label if label is None else label
    if model is None:
        fix = "run `magpie-exp stage=train` with the same config first, or set evaluation.model=<model folder>"
        if trained is None:
            raise ValueError("resolve_candidate: evaluation.model is null, so pass this config's trained model folder")
        folder = trained
        if not (folder / "config.json").exists():
            raise ConfigError(f"evaluation.model is null and this config's trained {trainer.upper()} model "
                              f"'{folder}' does not exist; {fix}")
        spec, label = str(folder), label or f"{trainer}-{folder.parent.name}"
    elif model == "generator":
        spec, label = generator.model, label or generator.name
    else:
        spec, label = model, label or Path(model).name.replace("embedded:", "")
        path = Path(spec).expanduser()
        if not spec.startswith("embedded:") and not path.exists() and (spec.startswith(("/", ".", "~")) or spec.count("/") != 1):
            raise ConfigError(f"evaluation.model: '{spec}' does not exist; give a model folder, embedded:<name>, a hub id, "
                              "'generator', or null for this config's trained model")
        if path.exists():
            spec = str(path.resolve())
    folder = Path(spec)
    key = f"{spec}@{_fingerprint(folder)}" if folder.is_dir() else spec
    return Candidate(label, spec, key)


def candidate_generator(cand: Candidate, ev: EvaluationConfig) -> GeneratorConfig:
    """The evaluated model as a generator: greedy answers of ``evaluation.max_tokens``."""
    return GeneratorConfig(name=cand.label, model=cand.spec, max_model_len=ev.max_model_len,
                           response=ResponseSampling(temperature=0.0, max_tokens=ev.max_tokens))
