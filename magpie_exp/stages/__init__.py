"""The stages, side by side, and the one registry the ``magpie-exp`` command and the pipeline both use.

A step is what ``pipeline.stages`` and ``force`` name (generate, tag, curate, pair, sft, dpo, evaluate); each is
run by one stage module of this package (sft and dpo by ``train``). No stage module imports another: a stage
finds its input's folder through ``keys`` (the table of cache keys) and takes what stages share from ``common``.
The step order is ``config.PIPELINE_STAGES``; a test checks this registry names exactly those steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

if TYPE_CHECKING:
    from magpie_exp.config import MagpieConfig
    from magpie_exp.stages.common import StageResult


def _generate(cfg: MagpieConfig, engines: Any) -> StageResult:
    from magpie_exp.stages.generate import run_generate

    return run_generate(cfg, engines)


def _tag(cfg: MagpieConfig, engines: Any, upstream: str | None = None) -> StageResult:
    from magpie_exp.stages.tag import run_tag

    return run_tag(cfg, engines, upstream=upstream)


def _curate(cfg: MagpieConfig, engines: Any, upstream: str | None = None) -> StageResult:
    from magpie_exp.stages.curate import run_curate

    return run_curate(cfg, upstream=upstream)


def _pair(cfg: MagpieConfig, engines: Any, upstream: str | None = None) -> StageResult:
    from magpie_exp.stages.pair import run_pair

    return run_pair(cfg, engines, upstream=upstream)


def _sft(cfg: MagpieConfig, engines: Any, upstream: str | None = None) -> StageResult:
    from magpie_exp.stages.train import run_sft

    return run_sft(cfg, upstream)


def _dpo(cfg: MagpieConfig, engines: Any, upstream: str | None = None, init: str | None = None) -> StageResult:
    from magpie_exp.stages.train import run_dpo

    return run_dpo(cfg, upstream, init)


def _evaluate(cfg: MagpieConfig, engines: Any, model: str | None = None, label: str | None = None) -> StageResult:
    from magpie_exp.stages.evaluate import run_evaluate

    return run_evaluate(cfg, engines, model=model, label=label)


def _keyed_folder(step: str) -> Callable[..., list[Path]]:
    def folders(cfg: MagpieConfig, upstream: str | None = None, init: str | None = None) -> list[Path]:
        from magpie_exp.stages.keys import folder

        return [folder(cfg, step, upstream=upstream, init=init)]

    return folders


def _evaluate_folders(cfg: MagpieConfig, model: str | None = None, label: str | None = None) -> list[Path]:
    from magpie_exp.stages.evaluate import evaluate_folders

    return evaluate_folders(cfg, model, label)


@dataclass(frozen=True)
class Step:
    name: str  # as pipeline.stages and force name it
    stage: str  # the stage=... that runs it alone (sft and dpo: train, with trainer=sft|dpo)
    # (config, engines to borrow, the step's arguments) -> result; the arguments are what the pipeline hands a step
    # instead of rewriting its config: upstream (the folder or file it reads), init (DPO's starting model),
    # model and label (the model evaluated); each falls back to the config (input, dpo.init_from, evaluation.model)
    run: Callable[..., StageResult]
    folders: Callable[..., list[Path]]  # (config, the same arguments) -> the folders it writes (what force removes)
    generates: bool  # it generates text, so it borrows engines (a dict, or the pipeline's pool)


STEPS: dict[str, Step] = {s.name: s for s in (
    Step("generate", "generate", _generate, _keyed_folder("generate"), True),
    Step("tag", "tag", _tag, _keyed_folder("tag"), True),
    Step("curate", "curate", _curate, _keyed_folder("curate"), False),
    Step("pair", "pair", _pair, _keyed_folder("pair"), True),
    Step("sft", "train", _sft, _keyed_folder("sft"), False),
    Step("dpo", "train", _dpo, _keyed_folder("dpo"), False),
    Step("evaluate", "evaluate", _evaluate, _evaluate_folders, True),
)}


def step_of(cfg: MagpieConfig) -> Step:
    """The step ``stage=...`` runs (for ``stage=train``, the one ``trainer`` names)."""
    return STEPS[cfg.trainer if cfg.stage == "train" else cfg.stage]
