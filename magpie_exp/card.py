"""A Hugging Face dataset card for every dataset export (generate, tag, curate): ``export/README.md`` with the
YAML metadata the Hub reads (license placeholder, task categories, languages, size, the Parquet config) and a
body that says how the data was made: the generator, the exact pre-query template, the sampling, the filter
recipe with its counts, the label distributions and contamination, and the project version.

Everything on the card comes from the stage folders' ``manifest.json`` and ``stats.json`` (the upstream chain is
followed through the manifests' input keys); no record is read and nothing upstream is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from magpie_exp import __version__
from magpie_exp.files import read_json

PARQUET = "data/train-00000-of-00001.parquet"  # the Hub's layout: data/<split>-<shard>-of-<shards>.parquet
SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M")]
LICENSE_NOTE = ("Set the license before publishing: outputs of a model are bound by its license (for example the "
                "Llama 3 Community License or Gemma's terms); `license: other` is a placeholder.")


def upstream_chain(stage_dir: Path) -> dict[str, dict[str, Any]]:
    """stage -> {"folder", "manifest", "stats"} for ``stage_dir`` and the stage folders it was made from (through
    the manifests' ``input`` keys, ``<stage>:<hash>``); a file input ends the chain."""
    chain: dict[str, dict[str, Any]] = {}
    folder: Path | None = stage_dir
    while folder is not None and (folder / "manifest.json").exists():
        manifest = read_json(folder / "manifest.json")
        stage = manifest.get("config", {}).get("stage") or folder.parent.name
        if stage in chain:
            break
        chain[stage] = {"folder": folder, "manifest": manifest, "stats": read_json(folder / "stats.json")}
        key = manifest.get("config", {}).get("input")
        if not isinstance(key, str) or ":" not in key or key.startswith("file:"):
            if isinstance(key, str):
                chain.setdefault("input", {"key": key})
            break
        up_stage, _, up_hash = key.partition(":")
        folder = folder.parents[1] / up_stage / up_hash
    return chain


def _size(n: int) -> str:
    return next((label for limit, label in SIZES if n < limit), "n>10M")


def _languages(labels: dict[str, dict[str, int]]) -> list[str]:
    codes = [code.lower() for code in (labels.get("language") or {}) if len(code) == 2 and code.isalpha()]
    return sorted(codes)


def _table(counts: dict[str, Any], key: str = "label", value: str = "records") -> list[str]:
    lines = [f"| {key} | {value} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1] if isinstance(kv[1], (int, float)) else 0, kv[0]))]
    return lines


def dataset_card(stage_dir: Path, export_dir: Path, records: int, stats: dict[str, Any]) -> str:
    """The card of the dataset exported from ``stage_dir`` to ``export_dir`` (``records`` rows; ``stats`` the
    stage's own, which may not be on disk yet)."""
    chain = upstream_chain(stage_dir)
    stage = stage_dir.parent.name
    if stage in chain:
        chain[stage]["stats"] = stats
    gen = chain.get("generate", {})
    gen_cfg = gen.get("manifest", {}).get("config", {})
    generator = gen_cfg.get("generator") or {}
    tag_stats = chain.get("tag", {}).get("stats", {})
    labels = tag_stats.get("labels") or {}
    meta: dict[str, Any] = {
        "license": "other",
        "task_categories": ["text-generation"],
        "language": _languages(labels) or None,
        "size_categories": [_size(records)],
        "tags": ["synthetic", "magpie", "magpie-exp", f"magpie-exp-{stage}"],
        "pretty_name": f"Magpie-style data ({generator.get('name', 'unknown generator')}, {stage} stage)",
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    }
    meta = {k: v for k, v in meta.items() if v is not None}
    body = [f"# {meta['pretty_name']}", "",
            f"{records} conversations made with magpie-exp {__version__} by the Magpie method "
            "(Xu et al., 2024, arXiv:2406.08464): an aligned chat model given only the part of its chat template "
            "before a user message writes an instruction; the same model answers it through the full template.",
            "", f"Stage: `{stage}` (folder `{stage_dir.name}`). {LICENSE_NOTE}", ""]
    if gen:
        sampling = {side: {k: v for k, v in (generator.get(side) or {}).items()
                           if k in ("temperature", "top_p", "max_tokens", "repetition_penalty", "n")}
                    for side in ("instruction", "response")}
        templates = gen.get("manifest", {}).get("rendered_templates", {}).get("generator", {})
        g = gen.get("stats", {})
        body += ["## Generation", "",
                 f"- Generator: `{generator.get('name')}` ({generator.get('model')})",
                 f"- Response generator: `{(gen_cfg.get('response_generator') or generator).get('name')}`",
                 f"- Engine: {gen_cfg.get('engine', {}).get('type')} ({gen_cfg.get('engine', {}).get('dtype')}), seed {gen_cfg.get('seed')}",
                 f"- Instruction sampling: {json.dumps(sampling['instruction'])}",
                 f"- Response sampling: {json.dumps(sampling['response'])}",
                 f"- Requested {g.get('requested', '?')} records, made {g.get('records', '?')}; "
                 f"dropped by reason: {json.dumps(g.get('dropped') or {})}", ""]
        if templates.get("pre_query") is not None:
            body += ["Pre-query template (what the generator was given to write an instruction; exactly, as a "
                     f"JSON string: `{json.dumps(templates['pre_query'], ensure_ascii=False)}`):", "",
                     "```text", templates["pre_query"], "```", "",
                     "Post-query template (what follows the instruction before the response; as a JSON string: "
                     f"`{json.dumps(templates.get('post_query', ''), ensure_ascii=False)}`).", ""]
    if tag_stats:
        body += ["## Tags", "", f"Taggers: {', '.join(tag_stats.get('taggers') or [])}; "
                 f"{tag_stats.get('records', '?')} records tagged.", ""]
        for name, counts in labels.items():
            body += [f"**{name}**", "", *_table(counts, name), ""]
        numeric = tag_stats.get("numeric") or {}
        if numeric:
            body += ["| tag | mean | median | min | max |", "|---|---|---|---|---|"]
            body += [f"| {k} | {v.get('mean')} | {v.get('median')} | {v.get('min')} | {v.get('max')} |" for k, v in numeric.items()]
            body.append("")
        if tag_stats.get("failures"):
            body += ["Tagger failures (the record keeps no label; curate rules on it drop the record):", "",
                     *_table(tag_stats["failures"], "tagger:reason"), ""]
        decontam = tag_stats.get("decontam")
        if decontam:
            against = decontam.get("against") or {}
            names = [f"{k} ({v} prompts)" for k, v in against.items()] if isinstance(against, dict) else list(against)
            body += ["## Contamination", "",
                     f"Checked {decontam.get('checked', '?')} instructions against {', '.join(names) or 'the evaluation sets'}: "
                     f"{decontam.get('contaminated', 0)} match an evaluation prompt (by benchmark: "
                     f"{json.dumps(decontam.get('by_benchmark') or {})}).", ""]
    cur = chain.get("curate")
    if cur:
        c = cur.get("stats", {})
        recipe = cur.get("manifest", {}).get("config", {}).get("curate", {})
        body += ["## Filter recipe", "",
                 f"Recipe `{c.get('recipe')}`: kept {c.get('kept', '?')} of {c.get('input_records', '?')} records.", "",
                 "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```", ""]
        if c.get("dropped"):
            body += ["Dropped, by the first rule each record failed:", "", *_table(c["dropped"], "reason"), ""]
    div = stats.get("diversity") or {}
    if div.get("sample"):
        parts = [f"distinct-1 {div.get('distinct_1')}, distinct-2 {div.get('distinct_2')} of the instructions"]
        if "category_entropy_bits" in div:
            parts.append(f"task-category entropy {div['category_entropy_bits']} bits ({div['category_entropy_normalized']} "
                         f"of the maximum over {div['task_categories']} categories)")
        if "vendi_score" in div:
            parts.append(f"mean pairwise cosine distance {div['mean_cosine_distance']} and Vendi score "
                         f"{div['vendi_score']} of the instruction embeddings")
        body += ["## Diversity", "", f"On {div['sample']} records (chosen by a hash of their ids, at most "
                 f"{div.get('sample_limit')}): " + "; ".join(parts) + ".", ""]
    if "input" in chain:
        body += [f"Made from the input `{chain['input']['key']}`.", ""]
    files = {PARQUET: "one row per conversation: id, messages, gen (provenance) and tags, the last two as JSON strings",
             "messages.jsonl": "id and messages (the chat format trainers read)",
             "sharegpt.jsonl": "the conversations in ShareGPT form", "records.jsonl": "full records: messages, provenance, tags",
             "hf": "the same rows saved with datasets.save_to_disk"}
    present = [f"- `{name}`: {what}" for name, what in files.items() if (export_dir / name).exists()]
    body += ["## Files", "", *present, ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)


def write_card(stage_dir: Path, export_dir: Path, records: int, stats: dict[str, Any]) -> Path:
    path = export_dir / "README.md"
    tmp = export_dir / ".README.md.tmp"
    tmp.write_text(dataset_card(stage_dir, export_dir, records, stats))
    tmp.replace(path)
    return path
