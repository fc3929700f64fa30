"""Benchmark: the generate stage's generated tokens/s against raw ``vllm.LLM.generate`` and the HF engine.

    make bench                     # or: .venv/bin/python benchmarks/bench_generate.py --count 32

One vLLM engine is built once. The generate stage runs on it (single-turn, so instructions + responses) while
every engine call it makes is recorded. The very same requests (same token-id prompts, same SamplingParams,
same batches) are then replayed through raw ``LLM.generate`` and through the Hugging Face engine. Printed:
tokens/s of each and the ratios stage / raw vLLM (overhead of the framework; target >= 0.95) and HF / raw vLLM.
Order: stage (records the calls, warms up), then raw, stage, raw, stage, raw (``--repeats 2``); the figures are
totals over the measured runs, so drift on a noisy machine hits both sides alike.
This is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Recorder:
    """Wraps an engine; keeps each call's requests and the generated token count."""

    def __init__(self, engine) -> None:  # noqa: ANN001
        self.engine, self.calls, self.info = engine, [], engine.info

    def generate(self, requests):  # noqa: ANN001, ANN201
        out = self.engine.generate(requests)
        self.calls.append(list(requests))
        return out

    def close(self) -> None:
        pass


def raw_vllm(engine, calls) -> tuple[int, float]:  # noqa: ANN001
    from vllm.inputs import TokensPrompt

    tokens, seconds = 0, 0.0
    for requests in calls:
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_token_ids)) for r in requests]
        params = [engine.sampling_params(r) for r in requests]
        start = time.perf_counter()
        outs = engine.llm.generate(prompts, params, use_tqdm=False)
        seconds += time.perf_counter() - start
        tokens += sum(len(o.token_ids) for out in outs for o in out.outputs)
    return tokens, seconds


def replay(engine, calls) -> tuple[int, float]:  # noqa: ANN001
    tokens, seconds = 0, 0.0
    for requests in calls:
        start = time.perf_counter()
        outs = engine.generate(requests)
        seconds += time.perf_counter() - start
        tokens += sum(c.token_count for out in outs for c in out)
    return tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=32, help="records the stage writes")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--eager", action="store_true", help="vLLM enforce_eager (faster start, slower decode)")
    parser.add_argument("--repeats", type=int, default=2, help="measured stage runs (raw runs: one more)")
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()

    from magpie_exp.cli import load_config, setup_environment
    from magpie_exp.engines import build_engine
    from magpie_exp.stages.generate import run_generate
    from magpie_exp.models import resolve_model

    cache = Path(os.environ.get("MAGPIE_EXP_CACHE", REPO / ".cache"))
    os.environ["MAGPIE_EXP_CACHE"] = str(cache)
    setup_environment(cache)
    out = tempfile.mkdtemp(prefix="magpie-bench-")
    cfg = load_config(f"generate.count={args.count}", f"generate.shard_size={args.shard_size}",
                      "generate.multi_turn.fraction=0", "generate.export=[messages]", f"paths.outputs={out}",
                      f"engine.enforce_eager={str(args.eager).lower()}")
    model = resolve_model(cfg.generator.model, cache)
    engine = build_engine(cfg.engine, cfg.generator, model, cfg.seed)
    recorder = Recorder(engine)

    # The stage once, recording its engine calls (also warms the engine up); then raw and stage alternate.
    run_generate(cfg, engines={"generator": recorder}, show_progress=False)
    calls = recorder.calls
    raw_runs, stage_runs = [raw_vllm(engine, calls)], []
    for _ in range(args.repeats):
        cfg.paths.outputs = tempfile.mkdtemp(prefix="magpie-bench-")
        start = time.perf_counter()
        result = run_generate(cfg, engines={"generator": engine}, show_progress=False)
        stage_runs.append((sum(result.stats["tokens"].values()), time.perf_counter() - start))
        raw_runs.append(raw_vllm(engine, calls))
    stage_tokens, stage_seconds = map(sum, zip(*stage_runs, strict=True))
    raw_tokens, raw_seconds = map(sum, zip(*raw_runs, strict=True))
    raw_rate = raw_tokens / raw_seconds
    stage_rate = stage_tokens / stage_seconds
    print(f"machine: {os.cpu_count()} cores; engine: vLLM {engine.info.version} {engine.info.extra.get('dtype')} "
          f"eager={args.eager}; {len(calls)} engine calls, {sum(len(c) for c in calls)} requests")
    print(f"generate stage  : {stage_tokens:7d} tokens in {stage_seconds:7.1f} s = {stage_rate:7.1f} tok/s "
          f"({args.repeats} runs; wall time of the whole stage: templates, sampling, sanitizing, shards, stats, export)")
    print(f"raw LLM.generate: {raw_tokens:7d} tokens in {raw_seconds:7.1f} s = {raw_rate:7.1f} tok/s "
          f"({len(raw_runs)} runs: " + ", ".join(f"{t / s:.1f}" for t, s in raw_runs) + " tok/s)")
    print(f"RATIO stage / raw vLLM = {stage_rate / raw_rate:.3f}  (target >= 0.95)")
    engine.close()
    if not args.skip_hf:
        from magpie_exp.engines.hf_engine import HFEngine

        hf_cfg = cfg.engine
        hf_cfg.type = "hf"
        hf = HFEngine(hf_cfg, cfg.generator, model, cfg.seed)
        hf_tokens, hf_seconds = replay(hf, calls)
        print(f"HF transformers : {hf_tokens:7d} tokens in {hf_seconds:7.1f} s = {hf_tokens / hf_seconds:7.1f} tok/s "
              f"(batch {hf_cfg.batch_size}, {hf.info.extra.get('dtype')}, 1 thread)")
        print(f"RATIO HF / raw vLLM = {hf_tokens / hf_seconds / raw_rate:.3f}")


if __name__ == "__main__":
    main()
