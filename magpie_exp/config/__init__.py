"""The config: its typed schema (``schema``), the value checks (``validate``) and the way from a composed Hydra
config to checked dataclasses (``compose``). It imports no stage, engine or step; checks that need a stage's own
tables gather in ``magpie_exp.checks``. Bad input raises ``ConfigError``: one line naming the key, the value and
the fix.

This face re-exports what the rest of the package uses, so callers import ``magpie_exp.config`` alone."""

from magpie_exp.config.compose import register_configs, secret_in_override, to_schema
from magpie_exp.config.schema import (ConfigError, CurateConfig, DecontamConfig, DPOSpec, EngineConfig, EvaluationConfig,
                                      ExecutorConfig, GenerateConfig, GeneratorConfig, GridCell, MagpieConfig, ResponseSampling,
                                      Rule, SFTSpec, TagConfig, TrainSpec, as_plain)
from magpie_exp.config.validate import (DTYPES, ENGINES, JUDGE_TAGGERS, PIPELINE_STAGES, STAGES, TAGGERS, need, validate,
                                        validate_engine)

__all__ = ["DTYPES", "ENGINES", "JUDGE_TAGGERS", "PIPELINE_STAGES", "STAGES", "TAGGERS", "ConfigError", "CurateConfig",
           "DPOSpec", "DecontamConfig", "EngineConfig", "EvaluationConfig", "ExecutorConfig", "GenerateConfig",
           "GeneratorConfig", "GridCell", "MagpieConfig", "ResponseSampling", "Rule", "SFTSpec", "TagConfig", "TrainSpec", "as_plain",
           "need",
           "register_configs", "secret_in_override", "to_schema", "validate", "validate_engine"]
