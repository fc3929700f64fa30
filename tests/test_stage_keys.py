"""Every stage folder is named from the config alone (``stages/keys.py``), and that name is the folder each stage
writes: a chain run with ``input`` null at every step, on a deterministic fake engine (fast), lands in exactly the
folders computed before anything existed, each manifest carries its folder's hash, and the same step fed its
upstream folder explicitly (as the pipeline does) names the same folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import schema
from magpie_exp.engines.fake_engine import FakeEngine
from magpie_exp.generators import load_side
from magpie_exp.stages import STEPS, keys
from magpie_exp.stages.curate import run_curate
from magpie_exp.stages.generate import run_generate
from magpie_exp.stages.pair import run_pair
from magpie_exp.stages.tag import run_tag

SMOL = "embedded:smollm2-135m-instruct"
COMMON = ("generate.count=8", "generate.shard_size=4", "generate.multi_turn.fraction=0", "generate.export=[messages]",
          "tag.taggers=[length]", "curate=none", "curate.dedup=false", "pair.num_responses=3", "tag.reward_source=judge",
          "tag.judge_mode=explain", "dpo.init_from=null")


def _script(prompt: str, spec, k: int):
    if "Rate how good an AI assistant's answer is" in prompt:  # the pair stage's judge: answer k scores k + 2
        return json.dumps({"explanation": "ok", "rating": int(re.search(r"Answer \d+\.(\d+)", prompt).group(1)) + 2})
    if prompt.rstrip().endswith("assistant"):  # a response (SmolLM2's assistant header ends the prompt)
        number = re.search(r"Question number (\d+)", prompt).group(1)
        return f"Answer {number}.{k}"
    return f"Question number {spec.seed % 10_000 * 16 + k}: what is it?"


def test_folders_are_named_from_the_config_alone_and_each_stage_writes_there(tmp_path: Path) -> None:
    cfg = schema(f"paths.outputs={tmp_path}", *COMMON)
    named = {step: keys.folder(cfg, step) for step in ("generate", "tag", "curate", "pair", "sft", "dpo")}
    assert not (tmp_path / "stages").exists()  # naming opened and wrote nothing
    assert len(set(named.values())) == 6 and all(f.parent.parent == tmp_path / "stages" for f in named.values())
    assert STEPS["dpo"].folders(cfg) == [named["dpo"]]
    assert keys.trained_model(cfg, "sft") == named["sft"] / "model"

    engine = FakeEngine(load_side("generator", cfg.generator, Path(cfg.paths.cache_dir)).tokenizer, _script)
    engines = {"generator": engine, SMOL: engine}
    results = {"generate": run_generate(cfg, engines=engines, show_progress=False),
               "tag": run_tag(cfg, engines=engines, show_progress=False)}
    results["curate"] = run_curate(cfg, show_progress=False)
    results["pair"] = run_pair(cfg, engines=engines, show_progress=False)
    for step, result in results.items():
        assert result.stage_dir == named[step], step
        manifest = json.loads((result.stage_dir / "manifest.json").read_text())
        assert manifest["config_hash"] == result.stage_dir.name, step
    assert results["pair"].stats["pairs"] >= 1

    # fed the upstream folder explicitly, as the pipeline feeds each step (an argument) or a user does (input=),
    # a step names the same folder, and running it there is a cache hit
    upstream = {"tag": "generate", "curate": "tag", "pair": "curate", "sft": "curate", "dpo": "pair"}
    for step, up in upstream.items():
        given = str(results[up].stage_dir)
        assert keys.folder(cfg, step, upstream=given) == named[step], step
        assert keys.folder(schema(f"paths.outputs={tmp_path}", *COMMON, f"input={given}"), step) == named[step], step
    again = run_tag(cfg, engines=engines, show_progress=False, upstream=str(results["generate"].stage_dir))
    assert again.cache_hit and again.stage_dir == named["tag"]
    again = run_pair(cfg, engines=engines, show_progress=False, upstream=str(results["curate"].stage_dir))
    assert again.cache_hit and again.stage_dir == named["pair"]
    # a JSONL file as input is keyed by its checksum: another folder, and the same one for the same bytes
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_bytes((results["pair"].stage_dir / "export" / "pairs.jsonl").read_bytes())
    by_file = keys.folder(schema(f"paths.outputs={tmp_path}", *COMMON, f"input={jsonl}"), "dpo")
    assert by_file != named["dpo"] and by_file == keys.folder(schema(f"paths.outputs={tmp_path}", *COMMON, f"input={jsonl}"), "dpo")

