"""The dataset card every dataset export writes (magpie_exp/card.py), on a generate -> tag -> curate chain made
with the fake engine (fast): the Hub's YAML metadata, its Parquet config pointing at the file written, and a
body that states the generator, the exact pre-query template, the drops, the labels and the recipe's counts,
read from the stage folders' manifests and stats (nothing upstream is changed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from conftest import schema
from magpie_exp.engines.fake_engine import FakeEngine
from magpie_exp.generators import load_side
from magpie_exp.stages.curate import run_curate
from magpie_exp.stages.generate import run_generate
from magpie_exp.stages.tag import run_tag


def _script(prompt: str, spec, k: int):
    if prompt.rstrip().endswith("assistant"):
        return "An answer" + " that goes on" * (int(prompt.split("number ")[-1].split("?")[0]) % 3)
    return "" if k % 4 == 3 else f"Question {spec.seed} number {k}?"


def _card(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    assert text.startswith("---\n")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """generate (9 records, fake engine) -> tag (lengths) -> curate (a length rule): (cfg, results, digests of
    the generate and tag folders taken before curate ran)."""
    out = tmp_path_factory.mktemp("chain") / "out"
    cfg = schema(f"paths.outputs={out}", "generate.count=9", "generate.shard_size=5", "generate.samples_per_request=4",
                 "generate.multi_turn.fraction=0", "generate.export=[messages,parquet]", "tracker.type=none")
    engine = FakeEngine(load_side("generator", cfg.generator, Path(cfg.paths.cache_dir)).tokenizer, _script)
    generated = run_generate(cfg, engines={"generator": engine}, show_progress=False)
    tagged = run_tag(schema(f"paths.outputs={out}", f"input={generated.stage_dir}", "tag.taggers=[length]",
                            "tag.plots=false"), show_progress=False)
    upstream = {p: _digests(p) for p in (generated.stage_dir, tagged.stage_dir)}
    curated = run_curate(schema(f"paths.outputs={out}", f"input={tagged.stage_dir}", "curate=none", "curate.dedup=false",
                                "curate.rules=[{field: response_length, op: '>', value: 9}]", "curate.export=[parquet]"),
                         show_progress=False)
    return cfg, generated, tagged, curated, upstream


def test_every_export_has_a_hub_card_that_says_how_the_data_was_made(chain) -> None:
    _, generated, tagged, curated, upstream = chain
    assert {p: _digests(p) for p in upstream} == upstream  # the card read the upstream folders, changed nothing

    meta, body = _card(Path(curated.exports["card"]))
    kept = curated.stats["kept"]
    assert 0 < kept < 9
    assert meta["license"] == "other" and "Set the license before publishing" in body
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert "synthetic" in meta["tags"] and "magpie" in meta["tags"]
    (config,) = meta["configs"]
    pattern = config["data_files"][0]["path"]
    files = sorted(p.relative_to(curated.stage_dir / "export").as_posix() for p in (curated.stage_dir / "export").glob(pattern))
    assert files == ["data/train-00000-of-00001.parquet"] and curated.exports["parquet"].endswith(files[0])
    import datasets

    rows = datasets.Dataset.from_parquet(curated.exports["parquet"])
    assert len(rows) == kept
    # the body: generator, the exact pre-query template, drops, recipe with its counts
    manifest = json.loads((generated.stage_dir / "manifest.json").read_text())
    pre_query = manifest["rendered_templates"]["generator"]["pre_query"]
    assert f"```text\n{pre_query}\n```" in body and json.dumps(pre_query) in body
    assert "smollm2-135m-instruct" in body and "Requested 9 records, made 9" in body
    assert json.dumps(generated.stats["dropped"]) in body and generated.stats["dropped"]
    assert f"kept {kept} of 9 records" in body and "response_length" in body
    assert f"## Diversity\n\nOn {kept} records" in body and f"distinct-1 {curated.stats['diversity']['distinct_1']}" in body
    for reason, count in curated.stats["dropped"].items():
        assert f"| {reason} | {count} |" in body
    # the generate and tag exports have their own cards
    gen_meta, gen_body = _card(Path(generated.exports["card"]))
    assert gen_meta["tags"][-1] == "magpie-exp-generate" and "## Filter recipe" not in gen_body and pre_query in gen_body
    tag_meta, tag_body = _card(Path(tagged.exports["card"]))
    assert "## Tags" in tag_body and "Taggers: length" in tag_body and "| response_length |" in tag_body
    assert "`data/train-00000-of-00001.parquet`" in body and "messages.jsonl" not in body  # only the files written


def test_diversity_figures_on_known_sets() -> None:
    import numpy as np

    from magpie_exp.diversity import diversity, embedding_diversity

    def rec(i: int, text: str, category: str | None = None) -> dict:
        return {"id": f"r{i}", "messages": [{"role": "user", "content": text}], "tags": {"task_category": category}}

    same = diversity([rec(i, "write a poem", "Creative writing") for i in range(10)])
    assert same["distinct_1"] == 0.1 and same["distinct_2"] == 0.1 and same["category_entropy_bits"] == 0.0
    varied = diversity([rec(i, f"word{i} other{i}", ["Math", "Coding"][i % 2]) for i in range(10)])
    assert varied["distinct_1"] == 1.0 and varied["distinct_2"] == 1.0
    assert varied["category_entropy_bits"] == 1.0 and varied["category_entropy_normalized"] == 1.0
    # the sample is bounded and chosen by id, not by order: the same records whatever the order
    records = [rec(i, f"text {i}") for i in range(50)]
    assert diversity(records, size=10) == diversity(records[::-1], size=10) and diversity(records, size=10)["sample"] == 10
    # Vendi: 1 for identical vectors, n for orthogonal ones; cosine distance 0 and 1
    assert embedding_diversity(np.ones((5, 4))) == {"mean_cosine_distance": 0.0, "vendi_score": 1.0}
    assert embedding_diversity(np.eye(4)) == {"mean_cosine_distance": 1.0, "vendi_score": 4.0}
    # planted: near-copies (one word changed, embeddings a small jitter around one point) score lower on every
    # figure than a varied set of the same size
    rng = np.random.default_rng(0)
    base = rng.standard_normal(32)
    near = [rec(i, f"please write a short poem about the sea number {i}") for i in range(40)]
    far = [rec(i, " ".join(f"w{rng.integers(10_000)}" for _ in range(9))) for i in range(40)]
    near_vec = {f"r{i}": base + 0.05 * rng.standard_normal(32) for i in range(40)}
    far_vec = {f"r{i}": rng.standard_normal(32) for i in range(40)}
    a = diversity(near, lambda ids: {i: near_vec[i] for i in ids})
    b = diversity(far, lambda ids: {i: far_vec[i] for i in ids})
    for figure in ("distinct_1", "distinct_2", "mean_cosine_distance", "vendi_score"):
        assert a[figure] < b[figure], (figure, a, b)
    assert a["vendi_score"] < 2 < 20 < b["vendi_score"]
    # embeddings are asked for the sampled ids only
    asked = []
    out = diversity(records, lambda ids: asked.append(ids) or {i: np.eye(50)[int(i[1:])] for i in ids}, size=10)
    assert len(asked[0]) == 10 and out["vendi_score"] == 10.0


def test_publish_dry_run_lists_the_card_and_parquet_and_upload_needs_a_token(chain, tmp_path: Path, monkeypatch) -> None:
    import subprocess
    import sys

    from huggingface_hub import DatasetCard

    from magpie_exp.config import ConfigError
    from magpie_exp.publish import run_publish

    _, generated, _, _, _ = chain
    out = tmp_path / "out"
    card = DatasetCard.load(generated.exports["card"])  # huggingface_hub parses it
    assert card.data.size_categories == ["n<1K"] and card.data.configs[0]["data_files"][0]["path"] == "data/train-*"
    exe = str(Path(sys.executable).with_name("magpie-exp"))
    args = ["stage=publish", f"input={generated.stage_dir}", "publish.repo_id=my-org/magpie-test", "publish.dry_run=true",
            f"paths.outputs={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    dry = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("would upload to my-org/magpie-test (dataset, private)")
    assert [line.split()[0] for line in lines[1:3]] == ["README.md", "data/train-00000-of-00001.parquet"]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="the environment variable HF_TOKEN is not set"):
        run_publish(schema(*args[1:3], f"paths.outputs={out}"))
    with pytest.raises(ConfigError, match="publish.repo_id must be <org or user>/<name>"):
        run_publish(schema(args[1], "publish.repo_id=no-slash", "publish.dry_run=true"))
    with pytest.raises(ConfigError, match="has no dataset export with a card"):
        run_publish(schema(f"input={tmp_path}", "publish.repo_id=a/b", "publish.dry_run=true"))


def test_the_report_explorer_filters_searches_and_opens_a_dropped_record_in_chromium(chain, tmp_path: Path) -> None:
    """report.html's explorer in headless Chromium: the view's state comes from the address (filter, search, the
    open record), the rows shown are those that match, and a dropped record shows its reason and conversation."""
    import html
    import re

    from conftest import chromium_dom
    from magpie_exp.pipeline import StepRecord
    from magpie_exp.report import write_run_report

    cfg, generated, tagged, curated, _ = chain
    steps = [StepRecord(name, str(r.stage_dir), False, 1.0, r.stats)
             for name, r in (("generate", generated), ("tag", tagged), ("curate", curated))]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    page = write_run_report(run_dir, cfg, steps, {}, None)
    assert "<script src" not in page.read_text() and "http" not in page.read_text().split('id="explorer"')[1].split("</script>")[-1]

    rejected = [json.loads(line) for line in (curated.stage_dir / "rejected.jsonl").read_text().splitlines()]
    target = rejected[0]
    word = target["instruction"].split()[1]  # the seed in "Question <seed> number <k>?"
    matching_dropped = [r for r in rejected if f" {word} " in f" {r['instruction']} "]

    def shown(dom: str) -> list[str]:
        body = dom.split('id="ex-body">', 1)[1].split("</tbody>", 1)[0]
        return re.findall(r'<tr data-id="([^"]+)" class="ex-row', body)

    everything = shown(chromium_dom(page.as_uri(), tmp_path))
    assert len(everything) == 9 and len(set(everything)) == 9  # 9 records: kept and dropped, once each
    dom = chromium_dom(f"{page.as_uri()}#q={word}&status=dropped&open={target['id']}", tmp_path)
    assert sorted(shown(dom)) == sorted(r["id"] for r in matching_dropped)
    assert f"{len(matching_dropped)} of 9 rows" in dom
    assert f'<h3 id="ex-open">{target["id"]} (dropped)</h3>' in dom
    assert f"dropped: {html.escape(target['reason'])}" in dom and "An answer" in dom  # the conversation, read from the tag folder
    kept = shown(chromium_dom(f"{page.as_uri()}#status=kept", tmp_path))
    assert len(kept) == curated.stats["kept"]


def test_the_explorer_cuts_long_turns_and_says_how_much_is_left_out() -> None:
    """A long reasoning trace or answer is cut on the page (not in the data) with the count of what is left out."""
    from magpie_exp.explorer import TEXT_LIMIT, _row

    long = "x" * (TEXT_LIMIT + 123)
    row = _row({"id": "r", "messages": [{"role": "user", "content": "short"},
                                        {"role": "assistant", "content": long, "reasoning_content": long}]}, "kept", None)
    user, answer = row["messages"]
    assert user["content"] == "short"
    for text in (answer["content"], answer["reasoning"]):
        kept, _, marker = text.partition("\n")
        assert kept == "x" * TEXT_LIMIT and marker.startswith("[... 123 more characters")
