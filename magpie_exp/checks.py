"""A whole config checked before anything runs: ``config.validate`` (the values the schema's types cannot check),
then each stage's cross-key checks, which need the stage's own tables (taggers, curate operators, trainers,
benchmarks). ``config`` imports no stage; this module is the one place that gathers the stages' checks."""

from __future__ import annotations

from typing import Any

from magpie_exp.config import MagpieConfig, to_schema
from magpie_exp.rules import check_curate_config
from magpie_exp.stages.evaluate import check_evaluation_config
from magpie_exp.stages.tag import check_tag_config
from magpie_exp.stages.train import check_train_config


def check_stages(cfg: MagpieConfig) -> MagpieConfig:
    """The stages' cross-key checks; raises ``ConfigError`` naming key, value and fix."""
    check_tag_config(cfg)
    check_curate_config(cfg.curate)
    check_train_config(cfg)
    check_evaluation_config(cfg)
    return cfg


def checked(raw: Any) -> MagpieConfig:
    """A composed DictConfig (or a ``MagpieConfig``) as checked dataclasses: schema, values, then the stages'."""
    return check_stages(to_schema(raw))  # to_schema validates a MagpieConfig as it is
