"""Property-based tests (hypothesis) for the code that meets arbitrary text: the record reader, the shard store
and the template cutter. The sanitizer's property test is in test_sanitize.py."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import REPO
from magpie_exp.config import ConfigError
from magpie_exp.shards import ShardStore
from magpie_exp.stages.common import _jsonl_input
from magpie_exp.templates import TemplateError, derive_templates, jinja_render, next_user_prefix

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)
ROLES = st.sampled_from(["system", "user", "assistant", "tool", "", None])
MESSAGE = st.fixed_dictionaries({"role": ROLES, "content": st.text(max_size=40) | st.integers() | st.none()})
ROW = st.one_of(JSON, st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4)},
                                            optional={"id": JSON, "tags": JSON, "gen": JSON}),
                st.fixed_dictionaries({"instruction": JSON, "response": JSON}),
                st.fixed_dictionaries({"conversations": st.lists(st.dictionaries(st.sampled_from(["from", "value"]),
                                                                                  st.text(max_size=10)), max_size=3)}))


def _read_all(path: Path, chunk: int) -> list[dict]:
    source = _jsonl_input(path, chunk)
    return list(source.records())


@SETTINGS
@given(rows=st.lists(ROW, min_size=1, max_size=8), chunk=st.integers(1, 4))
def test_reader_gives_records_or_one_config_error_naming_the_line(tmp_path: Path, rows: list, chunk: int) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    try:
        records = _read_all(path, chunk)
    except ConfigError as exc:
        assert str(exc).startswith("input: ") and " line " in str(exc)
        return
    assert len(records) == len(rows)  # every row became exactly one record, whatever the chunking
    for record in records:
        assert any(m["role"] == "user" for m in record["messages"])
        assert isinstance(record["id"], str) and isinstance(record["tags"], dict) and isinstance(record["gen"], dict)


@SETTINGS
@given(lines=st.lists(st.binary(max_size=60), min_size=1, max_size=6))
@example(lines=[b"[" * 100_000])  # nesting deeper than the JSON parser's recursion limit
@example(lines=[b"9" * 5000])  # an integer longer than Python converts
@example(lines=[b'{"messages": [{"role": "user", "content": "\\ud800 half a pair"}]}', b"\xff\xfe garbage"])
def test_reader_on_garbled_bytes_never_fails_any_other_way(tmp_path: Path, lines: list[bytes]) -> None:
    path = tmp_path / "garbled.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        _read_all(path, 2)
    except ConfigError as exc:  # one line that says where, or what the file is instead of JSON Lines
        assert any(part in str(exc) for part in (" line ", "is empty", "only blank lines", "a JSON array", "gzip")), exc


def test_lone_surrogates_from_input_become_replacement_characters(tmp_path: Path) -> None:
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "broken \\ud83d pair"}]}\n', encoding="utf-8")
    (record,) = _read_all(path, 10)
    assert record["messages"][0]["content"] == "broken \ufffd pair"
    record["messages"][0]["content"].encode("utf-8")  # a tokenizer can take it


@SETTINGS
@given(texts=st.lists(st.text(alphabet=st.characters(codec=None), max_size=50), min_size=1, max_size=5))
def test_shards_round_trip_any_text_lone_surrogates_included(tmp_path: Path, texts: list[str]) -> None:
    store = ShardStore(tmp_path / "s", "generate", "h")
    rows = [{"id": str(i), "messages": [{"role": "user", "content": t}]} for i, t in enumerate(texts)]
    store.write_shard("shard-0", rows)
    again = ShardStore(tmp_path / "s", "generate", "h")
    assert again.verify() == [] and list(again.read_shard("shard-0")) == rows
    again.shard_path("shard-0").read_bytes().decode("utf-8")  # valid UTF-8 on disk


# -- the template cutter -------------------------------------------------------------------------------------
TEMPLATES = REPO / "tests" / "fixtures" / "chat_templates"  # the project's copies: no skip on a fresh clone
FAMILIES = {"llama3.1": "meta-llama-Llama-3.1-8B-Instruct.jinja", "qwen2.5": "Qwen-Qwen2.5-7B-Instruct.jinja",
            "gemma2": "google-gemma-2-2b-it.jinja", "phi3.5": "microsoft-Phi-3.5-mini-instruct.jinja",
            "mistral-nemo": "mistralai-Mistral-Nemo-Instruct-2407.jinja"}
# user text as people write it: no template markup, no surrounding whitespace (templates trim it)
PLAIN = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>[]|{}%#\r"), max_size=60).map(str.strip)


def _render(name: str):
    special = json.loads((TEMPLATES / "special_tokens.json").read_text()).get(FAMILIES[name], {})
    return jinja_render((TEMPLATES / FAMILIES[name]).read_text(),
                        {k: v for k, v in special.items() if k in ("bos_token", "eos_token")})


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_cut_does_not_depend_on_the_message(family: str) -> None:
    render = _render(family)
    parts = derive_templates(render)

    @SETTINGS
    @given(text=PLAIN)
    def check(text: str) -> None:
        full = render([{"role": "user", "content": text}], True)
        assert full == parts.pre_query + text + parts.post_query

    check()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_next_user_prefix_is_a_prefix_of_every_continuation_or_a_template_error(family: str) -> None:
    render = _render(family)

    @SETTINGS
    @given(turns=st.lists(st.text(max_size=30), min_size=2, max_size=6).map(lambda ts: ts[: len(ts) // 2 * 2]),
           text=PLAIN)
    def check(turns: list[str], text: str) -> None:
        history = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        try:
            prefix = next_user_prefix(render, history)
        except TemplateError:
            return  # the only error the cutter may raise
        assert render([*history, {"role": "user", "content": text}], True).startswith(prefix)

    check()


# Curate on arbitrary tag tables: duplicate ids, null and missing tags under every operator, values of the wrong
# type. Either one ConfigError naming the record (or both lines of a repeated id), or an output in which every
# kept record passes every rule on a real value and every input record is kept or dropped exactly once.
TAG_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-20, 20), st.floats(-20, 20, allow_nan=False),
                      st.sampled_from(["safe", "unsafe", "good", "poor", "EN", "x"]))
CURATE_RULES = [("reward", ">", -5), ("reward", "<=", 10), ("safety", "!=", "unsafe"), ("safety", "==", "safe"),
                ("language", "in", ["EN", "FR"]), ("language", "not_in", ["ZH"]), ("input_quality", ">=", "average"),
                ("contaminated", "is_false", None), ("language", "regex", "^E")]
TAG_ROW = st.fixed_dictionaries({"id": st.sampled_from(["a", "b", "c", "d", "e", "f"])},
                                optional={name: TAG_VALUE for name in ("reward", "safety", "language", "input_quality",
                                                                       "contaminated")})


def _first_problem(rows: list[dict], rules: list[tuple]) -> str | None:
    """What curate must refuse first, reading the rows in order: a rule field no record carries (checked before
    any record), then a repeated id or a value a rule cannot read, whichever comes first."""
    from magpie_exp.labels import CATEGORICAL, ORDINAL

    for field, _, _ in rules:
        if not any(field in row for row in rows):
            return f"reads '{field}', which none of the first"
    seen = set()
    for row in rows:
        if row["id"] in seen:
            return f"record id '{row['id']}' appears twice"
        seen.add(row["id"])
        for field, op, _ in rules:
            v = row.get(field)
            if v is None:
                continue
            labels = ORDINAL.get(field) or CATEGORICAL.get(field)
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            if (labels and op not in ("regex", "not_regex") and v not in labels) or (
                    not labels and op in (">", "<=") and not numeric) or (op == "is_false" and not isinstance(v, bool)):
                return f"curate: record {row['id']} has {field}="
    return None


@functools.cache
def _curate_base():
    from conftest import schema

    return schema("curate=none", "curate.dedup=false", "curate.export=[messages]")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(TAG_ROW, min_size=1, max_size=6), rules=st.lists(st.sampled_from(CURATE_RULES), min_size=1,
                                                                      max_size=3, unique_by=lambda r: (r[0], r[1])))
def test_curate_keeps_only_what_passes_on_real_values_or_says_why_not(tmp_path_factory, rows, rules) -> None:
    from magpie_exp.config import Rule
    from magpie_exp.stages.curate import run_curate
    from magpie_exp.labels import CATEGORICAL, ORDINAL

    tmp = tmp_path_factory.mktemp("curate")
    data = tmp / "tagged.jsonl"
    with data.open("w") as handle:
        for row in rows:
            tags = {k: v for k, v in row.items() if k != "id"}
            handle.write(json.dumps({"id": row["id"], "messages": [{"role": "user", "content": f"q {row['id']}"},
                                                                   {"role": "assistant", "content": "a"}],
                                     "tags": tags}) + "\n")
    base = _curate_base()
    cfg = replace(base, input=str(data), paths=replace(base.paths, outputs=str(tmp / "out")),
                  curate=replace(base.curate, rules=[Rule(field=f, op=o, value=v) for f, o, v in rules]))
    expected = _first_problem(rows, rules)
    try:
        result = run_curate(cfg, show_progress=False)
    except ConfigError as exc:
        assert expected is not None and expected in str(exc), (expected, str(exc))
        return
    assert expected is None, expected
    kept = {json.loads(line)["id"] for line in open(result.exports["messages"])}
    assert result.stats["kept"] + sum(result.stats["dropped"].values()) == len(rows)
    for row in rows:
        passes = True
        for field, op, value in rules:
            v = row.get(field)
            if v is None:
                passes = False
                continue
            labels = ORDINAL.get(field) or CATEGORICAL.get(field)
            assert labels is None or op in ("regex", "not_regex") or v in labels  # else it was an error
            if op in (">", "<="):
                assert isinstance(v, (int, float)) and not isinstance(v, bool)
                passes &= (v > value) if op == ">" else (v <= value)
            elif op == ">=":
                passes &= labels.index(v) >= labels.index(value)
            elif op in ("==", "!="):
                passes &= (v == value) == (op == "==")
            elif op in ("in", "not_in"):
                passes &= (v in value) == (op == "in")
            elif op == "is_false":
                assert isinstance(v, bool)
                passes &= v is False
            else:
                import re

                passes &= re.search(value, str(v)) is not None
        assert (row["id"] in kept) == passes, (row, rules)
