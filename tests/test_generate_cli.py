"""The generate stage through the real ``magpie-exp`` command: SIGKILL mid-run then resume, and bad input
that must end with one clear line (exit code 2) before any engine starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CACHE, schema
from magpie_exp.config import ConfigError
from magpie_exp.engines.hardware import CPU_BF16_ENV
from magpie_exp.stages.generate import run_generate

EXE = str(Path(sys.executable).with_name("magpie-exp"))


def _run(args: list[str], tmp_path: Path, name: str, env: dict[str, str] | None = None, **kwargs
         ) -> subprocess.CompletedProcess:
    env = env or {**os.environ, "MAGPIE_EXP_CACHE": str(CACHE)}
    return subprocess.run([EXE, *args, f"hydra.run.dir={tmp_path / name}"], env=env, capture_output=True,
                          text=True, **kwargs)


@pytest.mark.slow
def test_sigkill_then_same_command_finishes_with_nothing_lost_or_duplicated(tmp_path: Path) -> None:
    # transformers as the engine: the same stage code as vLLM (the engine is behind one interface), without two
    # vLLM start-ups; tests/test_openai_engine.py kills a vLLM server mid-run. In bf16 on every machine (emulated
    # where the CPU has no native bf16): the GPU numerics, where a redone shard need not equal an earlier draw, so
    # what is asserted is what must hold there too: finished shards kept, every record once, none lost.
    # engine_batch = one shard: shards are written one by one while the run goes on, so there is a moment to kill it
    args = ["stage=generate", "engine=hf", "engine.dtype=auto", "generate.count=20", "generate.shard_size=5",
            "generate.engine_batch=5", "generate.multi_turn.fraction=0", "generator.instruction.max_tokens=48",
            "generator.response.max_tokens=24", "generate.export=[messages]", f"paths.outputs={tmp_path / 'out'}"]
    env = {**os.environ, "MAGPIE_EXP_CACHE": str(CACHE), CPU_BF16_ENV: "1"}
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen([EXE, *args, f"hydra.run.dir={tmp_path / 'first'}"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        manifests: list[Path] = []
        while time.time() < deadline and proc.poll() is None:
            manifests = list((tmp_path / "out").glob("stages/generate/*/manifest.json"))
            if manifests and len(json.loads(manifests[0].read_text())["shards"]) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed: " + (tmp_path / "first.log").read_text()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)  # with any engine processes it started
        proc.wait()
    stage = manifests[0].parent
    manifest = json.loads(manifests[0].read_text())
    assert not manifest["complete"] and 2 <= len(manifest["shards"]) < 4
    before = {name: (stage / "shards" / f"{name}.jsonl").read_bytes() for name in manifest["shards"]}

    rerun = _run(args, tmp_path, "second", timeout=900, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    manifest = json.loads(manifests[0].read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 4
    for name, data in before.items():  # finished shards were kept, not redone
        assert (stage / "shards" / f"{name}.jsonl").read_bytes() == data
    records = [json.loads(line) for f in sorted((stage / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert len(records) == 20 and len({r["id"] for r in records}) == 20
    assert {(r["gen"]["engine_dtype"], r["gen"]["response_engine_dtype"]) for r in records} == {("bfloat16", "bfloat16")}
    assert not list(stage.rglob("*.tmp-*"))
    assert "cache hit" in _run(args, tmp_path, "third", timeout=300, env=env).stderr


def test_missing_model_file_is_one_line(tmp_path: Path) -> None:
    result = _run(["generator.model=/nonexistent/SmolLM", f"paths.outputs={tmp_path}"], tmp_path, "run", timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "generator.model: '/nonexistent/SmolLM' does not exist" in errors[0]
    assert "Traceback" not in result.stderr


def test_unwritable_output_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _run([f"paths.outputs={blocker}/outputs"], tmp_path, "run", timeout=300)
    assert result.returncode == 2
    assert "paths.outputs: cannot write to" in result.stderr and "writable folder" in result.stderr


def test_model_without_chat_template(tmp_path: Path, smollm2_dir: Path) -> None:
    bare = tmp_path / "bare-model"
    bare.mkdir()
    for item in smollm2_dir.iterdir():
        if item.name not in ("chat_template.jinja", "tokenizer_config.json"):
            (bare / item.name).symlink_to(item)
    config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    cfg = schema(f"generator.model={bare}", f"paths.outputs={tmp_path / 'out'}")
    with pytest.raises(ConfigError, match="has no chat template; set generator.chat_template"):
        run_generate(cfg, show_progress=False)
    assert not list((tmp_path / "out").rglob("shards/*.jsonl"))
    manifests = list((tmp_path / "out").rglob("manifest.json"))
    assert all(not json.loads(m.read_text())["complete"] for m in manifests)


def test_template_that_cannot_be_cut(tmp_path: Path, smollm2_dir: Path) -> None:
    template = "{{ '<|im_start|>user\\n' }}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    cfg = schema(f"paths.outputs={tmp_path}")
    cfg.generator.chat_template = template
    with pytest.raises(ConfigError, match="cannot be cut at the user turn; set generator.pre_query_template"):
        run_generate(cfg, show_progress=False)


def test_chat_template_file_that_does_not_exist(tmp_path: Path, smollm2_dir: Path) -> None:
    cfg = schema(f"paths.outputs={tmp_path}", "generator.chat_template=/nowhere/template.jinja")
    with pytest.raises(ConfigError, match="generator.chat_template: file '/nowhere/template.jinja' does not exist"):
        run_generate(cfg, show_progress=False)


def test_unknown_embedded_model(tmp_path: Path) -> None:
    cfg = schema(f"paths.outputs={tmp_path}", "generator.model=embedded:llama-9000")
    with pytest.raises(ConfigError, match="unknown embedded model 'embedded:llama-9000'; choose from embedded:smollm2"):
        run_generate(cfg, show_progress=False)


def test_a_gguf_conversion_parses_the_file_once(monkeypatch) -> None:
    """transformers reads a GGUF file anew for the tokenizer, the config and the weights; during a conversion the
    reads share one parse (Gemma's conversion: 52.6 s -> 35.5 s, byte-identical output), and afterwards gguf is
    as it was."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    from magpie_exp.models import EMBEDDED, _one_gguf_parse

    parses: list[str] = []

    class Counting(gguf.GGUFReader):
        def __init__(self, path, mode="r") -> None:  # noqa: ANN001
            parses.append(str(path))
            super().__init__(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    path = EMBEDDED["smollm2-135m-instruct"].locate(CACHE)
    with _one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    assert len(parses) == 1 and tokenizer.vocab_size > 1000 and config.model_type == "llama"
    assert gguf.GGUFReader is Counting
    AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    assert len(parses) == 2  # outside a conversion every read parses again


SECRET = "sk-magpie-cli-secret-0123456789abcdef"


@pytest.mark.parametrize("override", [f"+engine.api_key={SECRET}", f"engine.api_key_env={SECRET}",
                                      f"engine.served_model_name={SECRET}", "+tracker.wandb_token=abc123"])
def test_a_secret_on_the_command_line_is_refused_before_anything_is_written(tmp_path: Path, override: str) -> None:
    """Hydra writes the overrides to .hydra/ before the job starts, and W&B records the run's arguments: a key on
    the command line is refused first, in one line that does not repeat it."""
    result = _run([override, f"paths.outputs={tmp_path / 'out'}"], tmp_path, "run", timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "put it in an environment variable" in lines[0] and SECRET not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_unknown_keys_are_refused_even_with_a_plus(tmp_path: Path) -> None:
    """Hydra's own hint for a typo is to add '+': the job then ran with the default count."""
    result = _run(["+generate.cout=5", f"paths.outputs={tmp_path / 'out'}"], tmp_path, "run", timeout=120)
    assert result.returncode == 2 and "generate.cout is not a config key; did you mean generate.count?" in result.stderr
    assert not (tmp_path / "out").exists()
    for free in ("+generator.chat_template_kwargs.enable_thinking=false", "+sft.extra.warmup_ratio=0.1"):
        schema(free)  # the free-form maps take any key
    with pytest.raises(ConfigError, match="holds what looks like a secret key"):
        schema(f"+generator.chat_template_kwargs.token={SECRET}")


@pytest.mark.parametrize(("args", "message"), [
    (["paths.outputs="], "paths.outputs is empty (Hydra would write to /runs/...)"),
    (["paths.outputs=/proc/no-such-place"], "paths.outputs: cannot write to '/proc/no-such-place'"),
    (["stage=generate", "input=somefile.jsonl"], "input is set but stage=generate makes data from nothing"),
    (["stage=curate", "force=[curate]"], "re-runs pipeline steps, but stage=curate runs one stage"),
    (["tracker.mode=online"], "tracker.mode=online but no W&B key"),
])
def test_bad_paths_and_ignored_settings_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(MAGPIE_EXP_CACHE=str(CACHE), HOME=str(tmp_path))  # no ~/.netrc with a W&B login
    outputs = [] if any(a.startswith("paths.outputs") for a in args) else [f"paths.outputs={tmp_path / 'out'}"]
    result = _run([*args, *outputs], tmp_path, "run", env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-1000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "stages").exists()


def test_a_config_yaml_in_config_dir_is_refused_and_schema_entries_are_not_choices(tmp_path: Path) -> None:
    """Hydra ignores a config.yaml in --config-dir (the shipped one is primary): say so instead of running without
    it. The typed schemas are not selectable as a generator or an engine."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("seed: 99\n")
    result = _run(["--config-dir", str(mine), f"paths.outputs={tmp_path / 'out'}"], tmp_path, "run", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--config-dir: {mine / 'config.yaml'} would be ignored" in result.stderr and "experiment=<name>" in result.stderr
    result = _run(["generator=generator_schema", "stage=inspect"], tmp_path, "schema", timeout=120)
    assert result.returncode != 0 and "Could not find 'generator/generator_schema'" in result.stderr
    assert "Traceback" not in result.stderr and "generator_schema" not in result.stderr.split("Available options")[1]


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path: Path) -> None:
    args = ["stage=generate", "engine=hf", "generate.count=6", "generate.shard_size=2", "generate.engine_batch=2",
            "generate.multi_turn.fraction=0",
            "generator.instruction.max_tokens=32", "generator.response.max_tokens=16", "generate.export=[messages]",
            f"paths.outputs={tmp_path / 'out'}"]
    env = {**os.environ, "MAGPIE_EXP_CACHE": str(CACHE)}
    proc = subprocess.Popen([EXE, *args, f"hydra.run.dir={tmp_path / 'first'}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        manifests = list((tmp_path / "out").glob("stages/generate/*/manifest.json"))
        if manifests and json.loads(manifests[0].read_text())["shards"]:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].endswith("interrupted; run the same command again to resume") and "Traceback" not in err
    assert not json.loads(manifests[0].read_text())["complete"]
    again = _run(args, tmp_path, "second", env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(manifests[0].read_text())["complete"]
