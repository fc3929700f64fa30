"""``stage=inspect``: what a generator's chat template gives Magpie, read from the tokenizer alone (no weights, no
engine), in seconds. Run it before spending GPU hours on a new model.

    magpie-exp stage=inspect generator=gpt-oss-20b generator.model=/models/gpt-oss-20b
    magpie-exp stage=inspect generator.model=/path/to/tokenizer-folder generator.chat_template=my.jinja
    magpie-exp stage=inspect generator=qwen3-8b generator.model=/models/qwen3 inspect.json=true

It reports, for the generator (and the response generator when it differs): the pre-query, post-query, end-of-turn
and multi-turn texts; the instruction and response stops (ids with their tokens, and strings); the BOS the
template renders; the pinned template date; the reasoning format and switch; and a rendered two-turn example
with the cut points marked, checked against the template's own render of the same conversation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from magpie_exp.config import GeneratorConfig, MagpieConfig
from magpie_exp.generators import Side, Stops, load_side

PLACEHOLDERS = ("<<INSTRUCTION 1>>", "<<RESPONSE 1>>", "<<INSTRUCTION 2>>", "<<RESPONSE 2>>")


def _stops(side: Side, stops: Stops) -> dict[str, Any]:
    tokens = side.tokenizer.convert_ids_to_tokens(list(stops.token_ids))
    return {"token_ids": list(stops.token_ids), "tokens": tokens, "strings": list(stops.strings)}


def describe(side: Side) -> dict[str, Any]:
    """Everything ``stage=inspect`` prints for one generator, as plain data (the JSON output)."""
    t = side.templates
    i1, r1, i2, r2 = PLACEHOLDERS
    # the derived pieces, put together, and the template's own render of the same conversation
    pieced = t.pre_query + i1 + t.post_query + r1 + (t.mt_append or "") + i2 + t.post_query
    conversation = [{"role": "user", "content": i1}, {"role": "assistant", "content": r1}, {"role": "user", "content": i2}]
    rendered = side.render(conversation, True)
    source = side.cfg.chat_template or side.tokenizer.chat_template or ""
    return {
        "name": side.cfg.name,
        "model": side.model_path,
        "pre_query": t.pre_query,
        "pre_query_source": t.pre_query_source,
        "post_query": t.post_query,
        "end_of_turn": t.end_of_turn,
        "multi_turn_append": t.mt_append,
        "instruction_stops": _stops(side, side.instruction_stops),
        "response_stops": _stops(side, side.response_stops),
        "bos": {"id": side.bos_id, "token": side.tokenizer.bos_token if side.bos_id is not None else None,
                "rule": "as the template renders it (the tokenizer's own special tokens are not added)"},
        "template_date": side.cfg.template_date,
        "template_prints_a_date": "strftime_now" in source,
        "reasoning": {"format": side.reasoning_format, "switch": side.cfg.reasoning,
                      "template_kwargs": {k: v for k, v in side.template_kwargs.items() if not callable(v)}},
        "example": pieced + r2 + (t.end_of_turn or ""),
        "example_matches_template": rendered == pieced,
    }


def run_inspect(cfg: MagpieConfig) -> dict[str, Any]:
    """The report of ``stage=inspect`` for the generator and, if it differs, the response generator."""
    sides: list[tuple[str, GeneratorConfig]] = [("generator", cfg.generator)]
    if cfg.response_generator is not None and cfg.response_generator != cfg.generator:
        sides.append(("response_generator", cfg.response_generator))
    return {key: describe(load_side(key, gen, Path(cfg.paths.cache_dir), tokenizer_only=True)) for key, gen in sides}


def render_text(report: dict[str, Any]) -> str:
    """The human-readable report: every text shown with repr-style escapes, so whitespace is visible."""
    lines: list[str] = []
    for key, d in report.items():
        lines += [f"{key}: {d['name']} ({d['model']})",
                  f"  pre-query ({d['pre_query_source']}):  {json.dumps(d['pre_query'], ensure_ascii=False)}",
                  f"  post-query:        {json.dumps(d['post_query'], ensure_ascii=False)}",
                  f"  end of turn:       {json.dumps(d['end_of_turn'], ensure_ascii=False)}",
                  f"  multi-turn append: {json.dumps(d['multi_turn_append'], ensure_ascii=False)}"]
        for kind in ("instruction_stops", "response_stops"):
            s = d[kind]
            pairs = ", ".join(f"{i} {tok!r}" for i, tok in zip(s["token_ids"], s["tokens"], strict=True))
            lines.append(f"  {kind.replace('_', ' ')}: ids [{pairs}]" + (f"; strings {s['strings']}" if s["strings"] else ""))
        bos = d["bos"]
        lines.append(f"  BOS: {bos['token']!r} (id {bos['id']})" if bos["id"] is not None else "  BOS: none")
        lines.append(f"  template date: {d['template_date']}"
                     + (" (the template prints it: pinned)" if d["template_prints_a_date"] else " (not printed by the template)"))
        r = d["reasoning"]
        lines.append(f"  reasoning: format {r['format']}, switch {r['switch']}, template kwargs {r['template_kwargs']}")
        lines.append("  example (two turns, cut points marked <<...>>)"
                     + ("" if d["example_matches_template"] else " -- NOTE: the template renders an earlier reply "
                        "differently from a new one (a trace or channel header the model writes itself, an override, "
                        "or a position-dependent template); multi-turn prompts are rendered from the whole history")
                     + ":")
        lines += ["    " + line for line in d["example"].splitlines() or [""]]
    return "\n".join(lines)
