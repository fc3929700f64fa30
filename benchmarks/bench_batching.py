"""Benchmark: the generate stage with shards drawn side by side (``generate.engine_batch``), in engine calls and
streamed into vLLM's running batch, against one shard per engine call, on one vLLM engine, the same records.

    .venv/bin/python benchmarks/bench_batching.py                       # 96 records, shards of 24, bf16 (default)
    .venv/bin/python benchmarks/bench_batching.py --dtype float32       # also checks the records are identical
    .venv/bin/python benchmarks/bench_batching.py --count 192 --engine-batch 48   # four waves: the window slides

One engine is built once and warmed up. Then the stage runs with ``engine_batch`` = the shard size (every engine
call carries one shard, as before the look-ahead), with ``--engine-batch`` (default 256, the shipped value) and
``generate.stream=false`` (the wave's requests in one call per step, waves one after another), and with the
shipped ``generate.stream=true`` (each shard's requests join the running batch as it asks; a window of
``engine_batch`` records slides over the run), alternated ``--repeats`` times, each into a fresh folder. Printed:
records/s and generated tokens/s of each, and the ratios to one shard per call and streamed / calls. In float32 a seeded request gets the same answer in any batch, so the records of
both settings must be byte-identical (checked and printed); in bf16 the draws depend on the batch, as they
always have. Wall time of the whole stage: templates, sampling, sanitizing, shards, stats and export included.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=96, help="records per run")
    parser.add_argument("--shard-size", type=int, default=24, help="records per shard (the shipped default)")
    parser.add_argument("--engine-batch", type=int, default=256, help="records per engine call (the shipped default)")
    parser.add_argument("--dtype", default="auto", help="engine.dtype: auto (bf16 where the CPU has it) or float32")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from magpie_exp.cli import load_config, setup_environment
    from magpie_exp.engines import build_engine
    from magpie_exp.stages.generate import run_generate
    from magpie_exp.models import resolve_model

    cache = Path(os.environ.get("MAGPIE_EXP_CACHE", REPO / ".cache"))
    os.environ["MAGPIE_EXP_CACHE"] = str(cache)
    setup_environment(cache)

    def config(batch: int, stream: bool = True):
        return load_config(f"generate.count={args.count}", f"generate.shard_size={args.shard_size}",
                           f"generate.engine_batch={batch}", f"generate.stream={str(stream).lower()}",
                           "generate.export=[messages]", f"engine.dtype={args.dtype}",
                           f"paths.outputs={tempfile.mkdtemp(prefix='magpie-bench-')}")

    cfg = config(args.shard_size)
    engine = build_engine(cfg.engine, cfg.generator, resolve_model(cfg.generator.model, cache), cfg.seed)
    run_generate(config(args.shard_size), engines={"generator": engine}, show_progress=False)  # warm-up
    settings = {"one shard per call": (args.shard_size, True), f"engine_batch={args.engine_batch}, calls": (args.engine_batch, False),
                f"engine_batch={args.engine_batch}, streamed": (args.engine_batch, True)}
    runs: dict[str, list[tuple[int, int, float]]] = {name: [] for name in settings}
    exports: dict[str, bytes] = {}
    for repeat in range(args.repeats):
        for name, setting in settings.items() if repeat % 2 == 0 else reversed(settings.items()):
            start = time.perf_counter()
            result = run_generate(config(*setting), engines={"generator": engine}, show_progress=False)
            runs[name].append((result.stats["records"], sum(result.stats["tokens"].values()), time.perf_counter() - start))
            exports[name] = Path(result.exports["messages"]).read_bytes()
    print(f"machine: {os.cpu_count()} cores; vLLM {engine.info.version} {engine.info.extra.get('dtype')}; "
          f"{args.count} records in shards of {args.shard_size} (multi-turn as shipped); {args.repeats} runs each, alternated")
    rates = {}
    for name, measured in runs.items():
        records, tokens, seconds = map(sum, zip(*measured, strict=True))
        rates[name] = records / seconds
        print(f"{name:22s}: {records:5d} records, {tokens:7d} tokens in {seconds:7.1f} s = {records / seconds:6.3f} rec/s, "
              f"{tokens / seconds:7.1f} tok/s")
    one, calls, streamed = rates.values()
    print(f"RATIO engine_batch={args.engine_batch} / one shard per call: calls {calls / one:.2f}, streamed {streamed / one:.2f}"
          f" (records/s); streamed / calls {streamed / calls:.2f}")
    same = len(set(exports.values())) == 1
    print(f"records identical in all settings: {same}" + ("" if engine.info.extra.get("dtype") == "float32" else
                                                            " (bf16: draws depend on the batch; use --dtype float32)"))
    engine.close()


if __name__ == "__main__":
    main()
