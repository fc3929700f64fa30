"""Tag-stage benchmarks: prints figures measured side by side in one run (not a test).

    python benchmarks/bench_tag.py dedup [--n 100000 --dim 384]   # ours vs the official gen_dis.py search
    python benchmarks/bench_tag.py tagging [--records 32]          # judge tagging vs raw engine throughput
    python benchmarks/bench_tag.py judge [--records 24 --k 5]      # judge_mode=logprobs against explain

dedup: the same random unit vectors go through the official method (exact L2 flat index, top-500 in query
batches of 1,024: min distance = 2nd hit, repeat count = hits < 0.05) and through ours (inner-product flat
index, k=2 for everyone, range search only for the few with a near neighbour); results must be identical.
Random vectors in 384 dimensions have no near-duplicates, so a share of planted duplicates is added.

tagging: one vLLM engine; the judge prompts of the quality tagger sent raw (free text, same max tokens) and
through the tagger (JSON-schema constrained, parsed, validated): records/s and generated tokens/s of each.

judge: one vLLM engine (the embedded judge, SmolLM2-135M) writes ``--records`` Magpie instructions from the
pre-query template and ``--k`` answers to each (T=0.8, as the pair stage); then quality, difficulty and the judge
score of every answer are tagged in both judge modes on the same records, in one run: records/s of each and
their ratio, agreement of the logprobs argmax with the explained label, and the instructions whose k scores
tie (the pair stage drops those: best == worst).
"""

from __future__ import annotations

import argparse
import time


def bench_dedup(n: int, dim: int, dup_share: float, seed: int) -> None:
    import numpy as np

    from magpie_exp.dedup import neighbour_stats, official_method

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    planted = int(n * dup_share)
    src = rng.integers(0, n, planted)
    dst = rng.choice(n, planted, replace=False)
    x[dst] = x[src] + 0.05 * rng.normal(size=(planted, dim)).astype(np.float32) * np.abs(x[src]).mean()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    print(f"{n} unit vectors, dim {dim}, {planted} planted near-duplicates")
    t = time.perf_counter()
    dist, repeat = official_method(x, threshold=0.05, k=500, batch_size=1024)
    official = time.perf_counter() - t
    t = time.perf_counter()
    ours = neighbour_stats(x, threshold=0.05, kind="flat")
    mine = time.perf_counter() - t
    same_dist = bool(np.allclose(ours.min_distance, dist, atol=1e-5))
    same_repeat = bool((ours.repeat_count == repeat).all())
    print(f"official (flat L2, k=500, batches of 1024): {official:8.1f} s")
    print(f"ours (flat IP, k=2 + range search):         {mine:8.1f} s   speed-up x{official / mine:.1f}")
    print(f"identical min_neighbor_distance: {same_dist} (max abs diff {np.abs(ours.min_distance - dist).max():.2e}), "
          f"identical repeat_count: {same_repeat}; records with repeats: {(repeat > 0).sum()}")


def bench_tagging(records: int) -> None:
    import os
    from pathlib import Path

    from magpie_exp.cli import load_config, setup_environment
    from magpie_exp.chat import Models
    from magpie_exp.engines import Request, SamplingSpec
    from magpie_exp.engines.pool import EnginePool
    from magpie_exp.stages.common import tag_context
    from magpie_exp.taggers import QualityTagger

    cfg = load_config("engine.enforce_eager=true", "tag.judge_mode=explain")
    setup_environment(Path(os.environ.get("MAGPIE_EXP_CACHE", Path(cfg.paths.cache_dir))))
    instructions = [f"Question {i}: how do I get better at {topic}?" for i, topic in
                    enumerate(["chess", "cooking", "running", "writing", "drawing", "python", "algebra", "singing"] * (records // 8 + 1))][:records]
    rows = [{"id": str(i), "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ""}]}
            for i, q in enumerate(instructions)]
    pool = EnginePool(cfg)
    tagger = QualityTagger(tag_context(cfg), Models(pool))
    tagger.prepare()
    judge = tagger.judge
    judge.started()
    raw_spec = SamplingSpec(temperature=0.0, max_tokens=cfg.tag.judge_max_tokens, seed=cfg.seed)
    prompts = [judge.chat_ids([{"role": "user", "content": tagger.task.render(q)}]) for q in instructions]
    judge.engine.generate([Request(prompts[0], raw_spec)])  # warm up
    for round_ in range(2):  # alternate, so drift on this shared machine hits both
        t = time.perf_counter()
        raw = judge.engine.generate([Request(p, raw_spec) for p in prompts])
        raw_s = time.perf_counter() - t
        raw_tokens = sum(c.token_count for o in raw for c in o)
        tokens_before = judge.tokens
        t = time.perf_counter()
        out = tagger.run(rows)
        tag_s = time.perf_counter() - t
        tag_tokens = judge.tokens - tokens_before
        ok = sum(1 for r in out if "_error" not in r)
        print(f"round {round_}: raw engine {records / raw_s:6.2f} rec/s {raw_tokens / raw_s:7.1f} tok/s | "
              f"quality tagger {records / tag_s:6.2f} rec/s {tag_tokens / tag_s:7.1f} tok/s "
              f"({ok}/{records} schema-valid) | rec/s ratio tagger/raw {(records / tag_s) / (records / raw_s):.2f}")
    pool.close()


def bench_judge(records: int, k: int) -> None:
    import os
    from pathlib import Path

    from magpie_exp.chat import Models
    from magpie_exp.cli import load_config, setup_environment
    from magpie_exp.engines import Request, SamplingSpec, build_engine
    from magpie_exp.engines.pool import EnginePool
    from magpie_exp.generators import load_side
    from magpie_exp.models import resolve_model
    from magpie_exp.stages.common import tag_context
    from magpie_exp.stages.pair import choose_pair
    from magpie_exp.taggers import DifficultyTagger, JudgeScoreTagger, QualityTagger

    explain = load_config("engine.enforce_eager=true", "tag.judge_mode=explain")
    logprobs = load_config("engine.enforce_eager=true", "tag.judge_mode=logprobs")
    cache = Path(os.environ.get("MAGPIE_EXP_CACHE", Path(explain.paths.cache_dir)))
    setup_environment(cache)
    side = load_side("generator", explain.generator, cache)
    engine = build_engine(explain.engine, explain.generator, resolve_model(explain.generator.model, cache), explain.seed)
    ask = SamplingSpec(n=records, temperature=1.0, top_p=1.0, max_tokens=64, seed=7,
                       stop_token_ids=side.instruction_stops.token_ids)
    (made,) = engine.generate([Request(side.encode(side.templates.pre_query), ask)])
    instructions = [c.text.strip() for c in made if c.text.strip()]
    spec = SamplingSpec(n=k, temperature=0.8, max_tokens=96, seed=7, stop_token_ids=side.response_stops.token_ids)
    t = side.templates
    answers = engine.generate([Request(side.encode(t.pre_query + q + t.post_query), spec) for q in instructions])
    pairs = [(q, a.text.strip()) for q, group in zip(instructions, answers, strict=True) for a in group]
    rows = [{"id": str(i), "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for i, (q, a) in enumerate(pairs)]
    firsts = rows[::k]
    print(f"{len(instructions)} instructions x {k} answers from {explain.generator.name}; judge {explain.tag.judge.name}")
    print(f"{'tagger':12} {'records':>7} {'explain rec/s':>14} {'logprobs rec/s':>15} {'ratio':>6}  agreement / failures")
    results = {}
    for cls, label, data in ((QualityTagger, "input_quality", firsts), (DifficultyTagger, "difficulty", firsts),
                             (JudgeScoreTagger, "judge_rating", rows)):
        seconds, out = {}, {}
        for mode, cfg in (("explain", explain), ("logprobs", logprobs)):
            tagger = cls(tag_context(cfg), Models(EnginePool(cfg, {cfg.tag.judge.model: engine})))
            tagger.prepare()
            tagger.run(data[-2:])  # warm up this mode's request shapes (and prefix cache of its shared prompt)
            start = time.perf_counter()
            out[mode] = tagger.run(data)
            seconds[mode] = time.perf_counter() - start
        old_label = "judge_score" if cls is JudgeScoreTagger else label
        both = [(a[old_label], b[label]) for a, b in zip(out["explain"], out["logprobs"], strict=True)
                if a.get(old_label) is not None and b.get(label) is not None]
        agree = sum(a == b for a, b in both)
        fails = {m: sum("_error" in r for r in out[m]) for m in out}
        rate = {m: len(data) / seconds[m] for m in seconds}
        print(f"{cls.name:12} {len(data):7d} {rate['explain']:14.2f} {rate['logprobs']:15.2f} "
              f"{rate['logprobs'] / rate['explain']:6.1f}  argmax = explained label on {agree}/{len(both)}; "
              f"failures explain {fails['explain']}, logprobs {fails['logprobs']}")
        results[cls.name] = out
    for mode, field in (("explain", "judge_score"), ("logprobs", "judge_score")):
        scores = [r.get(field) for r in results["judge_score"][mode]]
        ties = sum(choose_pair(scores[i:i + k], [1] * k).reason == "tie" for i in range(0, len(scores), k))
        print(f"pair selection on {mode:8} scores: {ties} of {len(instructions)} instructions tie (best == worst)")
    masses = [r["judge_mass"] for r in results["judge_score"]["logprobs"] if r.get("judge_mass") is not None]
    if masses:
        print(f"judge_score probability on the answers 1-10: min {min(masses):.3f}, median {sorted(masses)[len(masses) // 2]:.3f}")
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["dedup", "tagging", "judge"])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--dup-share", type=float, default=0.01)
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    if args.part == "dedup":
        bench_dedup(args.n, args.dim, args.dup_share, args.seed)
    elif args.part == "judge":
        bench_judge(args.records, args.k)
    else:
        bench_tagging(args.records)


if __name__ == "__main__":
    main()
