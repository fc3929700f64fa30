"""Fault drills through the real ``magpie-exp`` command: each stage is SIGKILLed mid-run at a failpoint
(magpie_exp/faults.py: the process dies with no clean-up, as on a lost node), then the same command is run again
and must finish with nothing lost and nothing duplicated; a full disk (a small tmpfs) stops with one clear line and
no corrupted shard. The generate stage's drill (an external SIGKILL of a vLLM run) is in test_generate_cli.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CACHE
from magpie_exp.records import record_id
from magpie_exp.shards import ShardStore

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).with_name("magpie-exp"))
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def _run(args: list[str], tmp_path: Path, name: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAGPIE_EXP_CACHE": str(CACHE), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    env.pop("MAGPIE_EXP_FAILPOINT", None)
    if failpoint:
        env["MAGPIE_EXP_FAILPOINT"] = failpoint
    return subprocess.run([EXE, *args, f"hydra.run.dir={tmp_path / 'runs' / name}"], env=env, capture_output=True,
                          text=True, timeout=900)


def _killed_then_finished(args: list[str], tmp_path: Path, failpoint: str) -> subprocess.CompletedProcess:
    killed = _run(args, tmp_path, "killed", failpoint)
    assert killed.returncode == -9, f"the failpoint {failpoint} was not reached:\n{killed.stderr[-3000:]}"
    again = _run(args, tmp_path, "again")
    assert again.returncode == 0, again.stderr[-3000:]
    return again


def _stage_input(folder: Path, stage: str, shards: int, per_shard: int, tags: bool = False, size: int = 0) -> list[str]:
    """A finished upstream stage folder of ``shards`` x ``per_shard`` records; returns their ids."""
    store = ShardStore(folder, stage, "drill-input", {"drill": True})
    ids = []
    for s in range(shards):
        rows = []
        for i in range(per_shard):
            n = s * per_shard + i
            question = f"Explain {WORDS[n % len(WORDS)]} number {n} in one sentence."
            answer = f"{WORDS[(n * 7) % len(WORDS)].title()} {n} is a word of the NATO alphabet. " + "x" * size
            row = {"id": record_id("drill", question), "messages": [{"role": "user", "content": question},
                                                                    {"role": "assistant", "content": answer}],
                   "gen": {"shard": f"shard-{s:05d}"}, "tags": {}}
            if tags:
                row["tags"] = {"language": "EN" if n % 3 else "FR", "safety": "safe", "reward": float(n % 5)}
            rows.append(row)
            ids.append(row["id"])
        store.write_shard(f"shard-{s:05d}", rows)
    store.mark_complete(records=len(ids))
    return ids


def _records(stage_dir: Path) -> list[dict]:
    store = ShardStore.open(stage_dir)
    assert store.complete and store.verify() == []
    assert not list(stage_dir.rglob("*.tmp-*"))
    return list(store.records())


def _only(pattern: str, root: Path) -> Path:
    (folder,) = [p.parent for p in root.glob(pattern)]
    return folder


def test_tag_killed_between_a_shard_and_its_manifest_entry(tmp_path: Path) -> None:
    ids = _stage_input(tmp_path / "generated", "generate", shards=4, per_shard=5)
    args = ["stage=tag", f"input={tmp_path / 'generated'}", "tag.taggers=[length,language,embedding]", "tag.plots=false",
            f"paths.outputs={tmp_path / 'out'}"]
    # the 6th shard written is the language tagger's 2nd: killed after its rename, before its manifest entry
    _killed_then_finished(args, tmp_path, "shard.renamed:6")
    tagged = _records(_only("stages/tag/*/manifest.json", tmp_path / "out"))
    assert sorted(r["id"] for r in tagged) == sorted(ids)
    assert all(r["tags"]["language"] and r["tags"]["instruction_length"] > 0 for r in tagged)
    # the same as a run that was never killed
    clean = _run([*args[:-1], f"paths.outputs={tmp_path / 'clean'}"], tmp_path, "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert tagged == _records(_only("stages/tag/*/manifest.json", tmp_path / "clean"))


def test_curate_killed_after_a_shard(tmp_path: Path) -> None:
    ids = _stage_input(tmp_path / "tagged", "tag", shards=3, per_shard=6, tags=True)
    args = ["stage=curate", f"input={tmp_path / 'tagged'}", "curate=english-safe", "curate.dedup=false",
            "curate.decontaminate=false",
            f"paths.outputs={tmp_path / 'out'}"]
    _killed_then_finished(args, tmp_path, "shard.written:1")
    folder = _only("stages/curate/*/manifest.json", tmp_path / "out")
    kept = _records(folder)
    assert len(kept) == 12 and len({r["id"] for r in kept}) == 12 and {r["id"] for r in kept} <= set(ids)
    exported = [json.loads(line) for line in (folder / "export" / "messages.jsonl").open()]
    assert len(exported) == 12
    # what a run writes is neither world-readable nor writable by others (umask 027)
    for path in [tmp_path / "runs" / "again", folder, *folder.rglob("*")]:
        assert path.stat().st_mode & 0o027 == 0, (path, oct(path.stat().st_mode))


def test_pair_killed_after_a_shard(tmp_path: Path, tiny_reward_model: Path) -> None:
    ids = _stage_input(tmp_path / "curated", "curate", shards=2, per_shard=3)
    args = ["stage=pair", f"input={tmp_path / 'curated'}", "engine=hf", "pair.num_responses=2", "pair.max_tokens=12",
            "pair.min_margin=0", "tag.reward_source=model", f"tag.reward_model.model={tiny_reward_model}",
            "tag.reward_model.name=tiny-rm", f"paths.outputs={tmp_path / 'out'}"]
    _killed_then_finished(args, tmp_path, "shard.written:1")
    rows = _records(_only("stages/pair/*/manifest.json", tmp_path / "out"))
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(len(r["responses"]) == 2 for r in rows)


def test_train_killed_after_a_checkpoint_resumes_from_it(tmp_path: Path) -> None:
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}."},
                                                     {"role": "assistant", "content": f"{w.title()}."}]}) + "\n"
                            for w in WORDS[:6]))
    args = ["stage=train", f"input={data}", "sft.lora.enabled=true", "sft.lora.r=4", "sft.max_steps=2",
            "sft.save_steps=1", "sft.max_length=64", "sft.per_device_train_batch_size=2", "sft.warmup_steps=0",
            f"paths.outputs={tmp_path / 'out'}"]
    _killed_then_finished(args, tmp_path, "train.checkpoint:1")
    folder = _only("stages/train/*/stats.json", tmp_path / "out")
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["resumed_from"].endswith("checkpoint-1") and stats["steps"] == 2
    assert (folder / "model" / "config.json").exists() and not (folder / "checkpoints").exists()


def test_evaluate_killed_after_an_answer_shard(tmp_path: Path) -> None:
    args = ["stage=evaluate", "evaluation.model=generator", "engine@evaluation.model_engine=hf",
            "evaluation.benchmarks=[ifeval]", "evaluation.limit=4", "evaluation.batch_size=2", "evaluation.max_tokens=16",
            f"paths.outputs={tmp_path / 'out'}"]
    _killed_then_finished(args, tmp_path, "shard.written:1")
    answers = _records(_only("stages/evaluate/answers/ifeval/*/manifest.json", tmp_path / "out"))
    assert len(answers) == 4 and len({a["id"] for a in answers}) == 4 and all(len(a["answers"]) == 1 for a in answers)
    (scores,) = (tmp_path / "out").glob("stages/evaluate/*/scores.json")
    assert json.loads(scores.read_text())["benchmarks"]["ifeval"]["n"] == 4


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB tmpfs (root only: skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_stops_with_one_line_and_no_corrupted_shard(tmp_path: Path, small_disk: Path) -> None:
    ids = _stage_input(tmp_path / "generated", "generate", shards=5, per_shard=4, size=120_000)  # ~0.5 MB a shard
    args = ["stage=tag", f"input={tmp_path / 'generated'}", "tag.taggers=[length]", "tag.plots=false",
            f"paths.outputs={small_disk / 'out'}"]
    full = _run(args, tmp_path, "full")
    assert full.returncode == 3, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "paths.outputs: the disk under" in errors[0] and "is full" in errors[0], full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    folder = _only("stages/tag/*/manifest.json", small_disk / "out")
    store = ShardStore.open(folder)
    assert not store.complete and store.verify() == []  # every listed shard is whole
    assert 1 <= len(store.done()) < 5
    assert not list(folder.rglob("*.tmp-*"))  # no half-written file left behind

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = _run(args, tmp_path, "again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(r["id"] for r in _records(folder)) == sorted(ids)
