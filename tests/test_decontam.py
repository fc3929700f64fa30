"""Decontamination against the evaluation sets: planted benchmark prompts (verbatim, inside a longer request,
reworded with a changed word order) are caught with their benchmark and item; clean controls are kept; curate's
decontaminate rule drops what was caught, with its reason; the counts reach the stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import schema
from magpie_exp.config import ConfigError, DecontamConfig
from magpie_exp.stages.curate import run_curate
from magpie_exp.decontam import Index, Prompt, benchmark_prompts, ngrams, words
from magpie_exp.evaluation.data import shipped_dir
from magpie_exp.stages.tag import run_tag

EVALS = shipped_dir()
IFEVAL = [json.loads(line) for line in (EVALS / "ifeval" / "input_data.jsonl").open()]
MT_BENCH = [json.loads(line) for line in (EVALS / "mt_bench" / "question.jsonl").open()]
ARENA = [json.loads(line) for line in (EVALS / "arena_hard_v0.1" / "question.jsonl").open()]
SHORT = next(q for q in ARENA if len(words(q["prompt"])) < 13)  # a prompt shorter than one 13-gram

# (record id, user turns, expected (benchmark, item) or None for a clean control)
PLANTED = [
    ("verbatim-ifeval", [IFEVAL[3]["prompt"]], ("ifeval", str(IFEVAL[3]["key"]))),
    ("verbatim-mt", [MT_BENCH[0]["turns"][0]], ("mt_bench", str(MT_BENCH[0]["question_id"]))),
    ("verbatim-arena", [ARENA[7]["prompt"]], ("arena_hard", ARENA[7]["uid"])),
    ("mt-second-turn", ["Tell me a joke.", MT_BENCH[5]["turns"][1]], ("mt_bench", f"{MT_BENCH[5]['question_id']}.2")),
    ("inside-a-request", [f"My teacher gave us this, please help me do it well: {IFEVAL[10]['prompt']} Thank you!"],
     ("ifeval", str(IFEVAL[10]["key"]))),
    ("short-whole", [SHORT["prompt"].upper()], ("arena_hard", SHORT["uid"])),  # case does not hide a copy
    ("reordered", ["Highlighting cultural experiences and must-see attractions, compose a travel blog post about "
                   "a recent trip to Hawaii that is engaging."], ("mt_bench", "81")),
    ("clean-story", ["Write a short story about a robot who learns to paint with watercolours."], None),
    ("clean-python", ["How do I sort a list of dictionaries by a key in Python?"], None),
    ("clean-japan", ["Write a blog post about my trip to Japan with tips on where to eat ramen."], None),
    ("clean-tcp", ["Explain the difference between TCP and UDP to a new network engineer."], None),
    ("clean-phrase", [f"I was told to '{SHORT['prompt'].rstrip('.?!')}', but first: what is a monad?"], None),
]


def test_ngrams_are_word_windows_and_short_texts_are_one_gram() -> None:
    assert words("Hello, World! It's 3pm.") == ["hello", "world", "it", "s", "3pm"]
    assert ngrams(["a", "b", "c"], 2) == {("a", "b"), ("b", "c")}
    assert ngrams(["a", "b"], 13) == {("a", "b")} and ngrams([], 13) == set()


def _index(n: int = 13) -> Index:
    prompts, counts, unchecked = benchmark_prompts(DecontamConfig(), None, Path("/nonexistent"), {})
    assert counts == {"ifeval": 541, "mt_bench": 160, "arena_hard": 500}  # every turn of MT-Bench's 80 questions
    assert set(unchecked) == {"alpaca_eval"}  # CC BY-NC: downloaded by an evaluation, never shipped
    return Index(prompts, n)


def test_ngram_overlap_catches_copies_and_keeps_the_controls() -> None:
    index = _index()
    for rid, turns, expected in PLANTED:
        if rid == "reordered":  # a reworded copy is the embedding check's (test below)
            continue
        match = index.match(turns, None, 0.5, None)
        if expected is None:
            assert match.method is None and match.ngram_overlap < 0.5, (rid, match)
        else:
            assert (match.benchmark, match.item, match.method) == (*expected, "ngram"), (rid, match)
            assert match.ngram_overlap == 1.0


def test_overlap_is_the_share_of_the_shorter_text() -> None:
    text = " ".join(f"w{i}" for i in range(40))
    index = Index([Prompt("b", "1", text)], 13)
    half = " ".join(f"w{i}" for i in range(20)) + " " + " ".join(f"x{i}" for i in range(20))
    _, share = index.overlap(half)  # 8 of the 28 13-grams of the planted text, 8 of its own 28
    assert share == pytest.approx(8 / 28)
    assert index.overlap(text[: len(text) // 2])[1] == 1.0  # a long piece of the prompt is all prompt


def test_an_lm_eval_local_file_is_checked_and_an_unreadable_one_is_listed(tmp_path: Path) -> None:
    good = tmp_path / "gsm8k.jsonl"
    good.write_text(json.dumps({"question": "Natalia sold clips to 48 of her friends in April, and then she sold "
                                            "half as many clips in May.", "answer": "72"}) + "\n")
    bad = tmp_path / "other.jsonl"
    bad.write_text(json.dumps({"label": 1}) + "\n")
    prompts, counts, unchecked = benchmark_prompts(DecontamConfig(benchmarks=["mt_bench"]), None, tmp_path,
                                                   {"gsm8k": str(good), "other": str(bad)})
    assert counts == {"mt_bench": 160, "lm_eval:gsm8k": 1} and "prompt columns" in unchecked["lm_eval:other"]
    match = Index(prompts, 13).match(["natalia sold clips to 48 of her friends in april and then she sold half as "
                                      "many clips in may how many in all"], None, 0.5, None)
    assert (match.benchmark, match.item) == ("lm_eval:gsm8k", "0")


@pytest.mark.parametrize(("override", "message"), [
    ("tag.decontam.benchmarks=[gsm8k]", "tag.decontam.benchmarks has unknown set(s) ['gsm8k']"),
    ("tag.decontam.ngram=0", "tag.decontam.ngram must be >= 1"),
    ("tag.decontam.similarity=1.5", "tag.decontam.similarity must be in (0, 1]"),
])
def test_bad_decontam_config_is_one_line(override: str, message: str) -> None:
    from magpie_exp.config import validate

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate(schema(override))


def test_no_evaluation_set_available_stops_before_tagging(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "hello"}]}) + "\n")
    empty = tmp_path / "evals"
    empty.mkdir()
    cfg = schema(f"input={data}", f"paths.outputs={tmp_path / 'out'}", "tag.taggers=[decontam]",
                 f"evaluation.data_dir={empty}")
    with pytest.raises(ConfigError, match="none of .* is available locally"):
        run_tag(cfg, show_progress=False)
    assert not list((tmp_path / "out").rglob("*.jsonl"))


@pytest.mark.slow
def test_decontam_tagger_and_curate_rule_on_planted_prompts(tmp_path: Path) -> None:
    """The real tagger (13-grams + the embedded MiniLM) over planted records, then curate's decontaminate rule."""
    data = tmp_path / "planted.jsonl"
    with data.open("w") as handle:
        for rid, turns, _ in PLANTED:
            messages = [m for t in turns for m in ({"role": "user", "content": t}, {"role": "assistant", "content": "Sure."})]
            handle.write(json.dumps({"id": rid, "messages": messages}) + "\n")
    out = tmp_path / "out"
    result = run_tag(schema(f"input={data}", f"paths.outputs={out}", "tag.taggers=[decontam]", "tag.plots=false"),
                     show_progress=False)
    tags = {json.loads(line)["id"]: json.loads(line)["tags"] for line in open(result.exports["records"])}
    for rid, _, expected in PLANTED:
        t = tags[rid]
        if expected is None:
            assert t["contaminated"] is False and t["contam_method"] is None, (rid, t)
            assert t["contam_similarity"] < 0.9
        else:
            assert t["contaminated"] is True and (t["contam_benchmark"], t["contam_item"]) == expected, (rid, t)
    assert tags["reordered"]["contam_method"] == "embedding" and tags["reordered"]["contam_ngram_overlap"] < 0.5
    assert tags["verbatim-mt"]["contam_similarity"] == pytest.approx(1.0, abs=1e-3)
    assert "13-gram overlap >= 0.5 or all-minilm-l6-v2 cosine >= 0.9 against ifeval (541)" in tags["clean-tcp"]["by"]["decontam"]
    caught = sum(1 for _, _, e in PLANTED if e)
    stats = result.stats["decontam"]
    assert stats["checked"] == len(PLANTED) and stats["contaminated"] == caught
    assert stats["by_benchmark"] == {"ifeval": 2, "mt_bench": 3, "arena_hard": 2}
    assert stats["unchecked"] == {"alpaca_eval": "not available locally (an evaluation that uses it downloads it)"}
    from magpie_exp.tracking import flatten  # what the W&B run logs of a stage's stats (log_stage)

    logged = flatten({"tag": result.stats})
    assert logged["tag/decontam/by_benchmark/mt_bench"] == 3 and logged["tag/decontam/against/arena_hard"] == 500

    curated = run_curate(schema(f"input={result.stage_dir}", f"paths.outputs={out}", "curate=none",
                                "curate.decontaminate=true", "curate.dedup=false", "curate.export=[messages]"),
                         show_progress=False)
    assert curated.stats["kept"] == len(PLANTED) - caught
    assert curated.stats["dropped"] == {"decontam: matches an evaluation prompt": caught}
    rejected = {json.loads(line)["id"] for line in open(curated.stage_dir / "rejected.jsonl")}
    assert rejected == {rid for rid, _, e in PLANTED if e}


def test_decontaminate_needs_the_tagger(tmp_path: Path) -> None:
    from magpie_exp.rules import check_tagged_fields

    with pytest.raises(ConfigError, match=r"curate.decontaminate needs the field 'contaminated'.*add 'decontam'"):
        check_tagged_fields(schema("curate=english-safe").curate, ["language", "safety", "embedding"])
