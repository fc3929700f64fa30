"""From a composed Hydra config to checked dataclasses: unknown keys refused (with the closest key named), no
secret in any value or command-line override, then the value checks."""

from __future__ import annotations

import re
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from magpie_exp.config.schema import ConfigError, MagpieConfig
from magpie_exp.config.validate import ENV_NAME, validate


# What a key looks like (OpenAI/Anthropic sk-, Hugging Face hf_, GitHub, Slack, AWS), and key names
# that hold one. A secret given on the command line would be written by Hydra to .hydra/ and reach W&B.
SECRET_VALUE = re.compile(r"\b(sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|"
                          r"xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b")
SECRET_KEY = re.compile(r"(api_?key|token|secret|password)$", re.IGNORECASE)


def secret_in_override(override: str) -> str | None:
    """The config key of a command-line override that carries a secret (its value is never repeated), or None."""
    key, sep, value = override.lstrip("+~").partition("=")
    if not sep:
        return None
    if SECRET_VALUE.search(value) or (SECRET_KEY.search(key) and value.strip() not in ("", "null")):
        return key
    if key.endswith("_env") and value.strip() not in ("", "null") and not ENV_NAME.match(value.strip()):
        return key
    return None


def _check_no_secret_values(node: Any, prefix: str = "") -> None:
    """No value anywhere in the config looks like a key (the Python API path: nothing writes it yet)."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_no_secret_values(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_no_secret_values(v, f"{prefix}{i}.")
    elif isinstance(node, str) and SECRET_VALUE.search(node):
        raise ConfigError(f"{prefix.rstrip('.')} holds what looks like a secret key; keys never go in configs: put it "
                          "in an environment variable and name that variable (e.g. engine.api_key_env=OPENAI_API_KEY)")


def _unknown_keys(node: Any, schema: Any, prefix: str) -> list[str]:
    """Keys of a composed config that no schema field declares (``+key=value`` got them past Hydra, and
    ``OmegaConf.to_object`` would drop them without a word). Maps typed ``dict[str, Any]`` are free-form."""
    import dataclasses
    import typing

    if not isinstance(node, DictConfig) or not dataclasses.is_dataclass(schema):
        return []
    hints = typing.get_type_hints(schema)
    unknown = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if key not in hints:
            unknown.append(path)
            continue
        kind = hints[key]
        inner = [a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)]
        child = node._get_node(key)
        if dataclasses.is_dataclass(kind) or inner:
            unknown += _unknown_keys(child, kind if dataclasses.is_dataclass(kind) else inner[0], f"{path}.")
        elif typing.get_origin(kind) is list and typing.get_args(kind) and dataclasses.is_dataclass(typing.get_args(kind)[0]):
            for i, item in enumerate(child or []):
                unknown += _unknown_keys(item, typing.get_args(kind)[0], f"{path}[{i}].")
    return unknown


def _refuse_unknown_keys(cfg: DictConfig) -> None:
    import difflib

    unknown = _unknown_keys(cfg, MagpieConfig, "")
    if unknown:
        key = unknown[0]
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        siblings = [k for k in (node.keys() if isinstance(node, DictConfig) else []) if f"{parent}.{k}".lstrip(".") not in unknown]
        close = difflib.get_close_matches(leaf.split("[")[0], [str(k) for k in siblings], n=1)
        raise ConfigError(f"{key} is not a config key" + (f"; did you mean {(parent + '.') if parent else ''}{close[0]}?"
                          if close else "; see `magpie-exp --cfg job` for the keys there are")
                          + " (a + prefix does not make a key exist)")


def to_schema(cfg: DictConfig | MagpieConfig) -> MagpieConfig:
    """Turn a composed DictConfig into checked dataclasses (a plain ``MagpieConfig`` passes through)."""
    if isinstance(cfg, MagpieConfig):
        return validate(cfg)
    _refuse_unknown_keys(cfg)
    _check_no_secret_values(OmegaConf.to_container(cfg, resolve=False))
    merged = OmegaConf.merge(OmegaConf.structured(MagpieConfig), cfg)
    return validate(cast(MagpieConfig, OmegaConf.to_object(merged)))


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="magpie_schema", node=MagpieConfig)
