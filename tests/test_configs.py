"""Every shipped config composes and validates; bad values fail with one line naming key, value and fix."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import REPO, compose, schema
from magpie_exp.config import ConfigError

GENERATORS = sorted(p.stem for p in (REPO / "conf" / "generator").glob("*.yaml"))
CONTROLS = sorted(p.stem for p in (REPO / "conf" / "control").glob("*.yaml"))
SAMPLINGS = sorted(p.stem for p in (REPO / "conf" / "sampling").glob("*.yaml"))
ENGINES = sorted(p.stem for p in (REPO / "conf" / "engine").glob("*.yaml"))


def test_official_families_have_configs() -> None:
    for name in ["llama3-8b-instruct", "llama3-70b-instruct", "llama3.1-8b-instruct", "llama3.1-70b-instruct",
                 "llama3.3-70b-instruct", "qwen2-7b-instruct", "qwen2.5-7b-instruct", "qwen2.5-72b-instruct",
                 "phi3-mini-128k-instruct", "phi3.5-mini-instruct", "gemma2-9b-it", "gemma2-27b-it",
                 "mistral-7b-instruct-v0.3", "llama2-7b-chat", "yi1.5-34b-chat", "deepseek-coder-v2-lite-instruct",
                 "qwen3-8b", "smollm2-135m-instruct"]:
        assert name in GENERATORS


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("engine", ENGINES)
def test_every_generator_composes_with_every_engine(generator: str, engine: str) -> None:
    if engine == "openai-chat":  # a chat API cannot do Magpie generation; it serves judges and taggers
        with pytest.raises(ConfigError, match="engine.api=chat cannot run generate"):
            schema(f"generator={generator}", f"engine={engine}")
    chat = ["stage=tag", "tag.judge_mode=explain"] if engine == "openai-chat" else []  # no token-id logprobs
    cfg = schema(f"generator={generator}", f"engine={engine}", *chat)
    assert cfg.generator.name == generator
    assert cfg.generator.trust_remote_code is False


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_every_control_and_sampling_composes(control: str, sampling: str) -> None:
    cfg = schema(f"control={control}", f"sampling={sampling}")
    if sampling != "default":
        assert cfg.generate.count is None and sum(c.count for c in cfg.generate.grid) in (1_000_000, 3_000_000)


def test_gpu_paper_setups_compose() -> None:
    pro = schema("generator=llama3-70b-instruct", "sampling=pro-table7", "generate.shard_size=5000")
    assert pro.generator.tensor_parallel_size == 4 and len(pro.generate.grid) == 4
    l31 = schema("generator=llama3.1-8b-instruct", "control=math")
    assert l31.generator.ban_first_tokens == ["#", "##", "###", "####"] and l31.generator.sanitize == "llama3"
    assert l31.generate.system_prompts[0].name == "math"


@pytest.mark.parametrize("override,message", [
    ("generate.count=0", "generate.count must be >= 1"),
    ("generate.samples_per_request=0", "generate.samples_per_request must be >= 1; got 0"),
    ("generate.samples_per_request=-3", "generate.samples_per_request must be >= 1; got -3"),
    ("generate.shard_size=0", "generate.shard_size must be >= 1"),
    ("generate.multi_turn.fraction=1.5", "generate.multi_turn.fraction must be in [0, 1]; got 1.5"),
    ("generator.instruction.top_p=0", "generator.instruction.top_p must be in (0, 1]"),
    ("generator.sanitize=mistral", "generator.sanitize must be one of llama3, gemma2 or null; got 'mistral'"),
    ("engine.type=tgi", "engine.type must be one of vllm, hf, openai; got 'tgi'"),
    ("engine.dtype=fp8", "engine.dtype must be one of"),
    ("engine=openai engine.base_urls=[]", "engine.base_urls is empty"),
    ("generate.export=[csv]", "generate.export has unknown format(s) ['csv']"),
    ("generate.count=5 sampling=pro-table7", "disagrees with the sum of generate.grid counts"),
])
def test_bad_values_give_one_clear_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        schema(*override.split(" "))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_key_and_wrong_type_fail_at_composition() -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as info:
        compose("generate.temprature=1.0")
    assert "temprature" in str(info.value)
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose("generate.count=many")
    assert "count" in str(info.value)


def test_unknown_generator_lists_the_options() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose("generator=gpt-7")
    assert "Could not find 'generator/gpt-7'" in str(info.value)
    assert "smollm2-135m-instruct" in str(info.value)


def test_gpu_tagging_configs_compose_and_validate() -> None:
    from conftest import schema

    cfg = schema("stage=tag", "generator@tag.judge=llama3-70b-instruct", "tag/guard=llama-guard-3-8b",
                 "tag/reward_model=armorm-llama3-8b", "tag/embedder=all-mpnet-base-v2", "tag.dedup.device=cuda",
                 "generator@tag.base_model=llama3-8b-base", "tag.taggers=[length,language,quality,difficulty,"
                 "task_category,safety,reward,base_reward,embedding]", "engine.dtype=bfloat16")
    assert cfg.tag.judge.tensor_parallel_size == 4
    assert cfg.tag.guard_format == "chat_template" and cfg.tag.reward_source == "model"
    assert cfg.tag.reward_model.trust_remote_code is True  # only in the named ArmoRM config
    for rm in ("fsfairx-llama3-rm", "skywork-reward-llama3.1-8b"):
        assert schema(f"tag/reward_model={rm}").tag.reward_model.trust_remote_code is False
    assert schema("tag/guard=llama-guard-2-8b").tag.guard.model == "meta-llama/Meta-Llama-Guard-2-8B"


def test_every_curate_recipe_composes() -> None:
    from pathlib import Path

    from conftest import schema
    from magpie_exp.cli import conf_dir

    recipes = sorted(p.stem for p in (Path(conf_dir()) / "curate").glob("*.yaml"))
    assert len(recipes) >= 11
    for recipe in recipes:
        cfg = schema(f"curate={recipe}", "stage=curate")
        assert cfg.curate.name == recipe


def test_remote_code_is_trusted_only_where_a_named_model_config_says_so() -> None:
    """``trust_remote_code`` is false everywhere but in the config of the one model that needs it; the code never
    sets it itself (every loader passes the config's value)."""
    import re

    import yaml

    trusted = []
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        def walk(node, where=path):
            if isinstance(node, dict):
                if node.get("trust_remote_code") is True:
                    assert node.get("model"), f"{where}: trust_remote_code without the model it is for"
                    trusted.append((where.relative_to(REPO).as_posix(), node["model"]))
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
        walk(yaml.safe_load(path.read_text()))
    assert trusted == [("conf/tag/reward_model/armorm-llama3-8b.yaml", "RLHFlow/ArmoRM-Llama3-8B-v0.1")]
    cfg = schema()
    for key, value in (("generator", cfg.generator), ("tag.judge", cfg.tag.judge), ("tag.guard", cfg.tag.guard),
                       ("tag.base_model", cfg.tag.base_model), ("tag.reward_model", cfg.tag.reward_model),
                       ("evaluation.judge", cfg.evaluation.judge)):
        assert value is None or value.trust_remote_code is False, key
    for source in (REPO / "magpie_exp").rglob("*.py"):
        assert not re.search(r"trust_remote_code\s*=\s*True", source.read_text()), source
