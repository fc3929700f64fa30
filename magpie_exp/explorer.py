"""The data explorer of ``report.html``: the records of a run in one self-contained page (no CDN, no network),
filtered by tag, searched by text, each conversation (with its reasoning, where a record has it) opened on
click, with the drop reason of each rejected record.

Bounded: the first ``KEPT_LIMIT`` curated records and the first ``DROPPED_LIMIT`` rejected ones (their full
conversations read from the tag folder they were curated from), each turn's text and reasoning cut at
``TEXT_LIMIT`` characters with a marker saying how much more there is (a set of long reasoning traces would
otherwise make a page of hundreds of MB); the page says when it shows fewer records than there are. Without a curate step the explorer shows the tagged (or generated) records. The view's state lives in the
address (``report.html#q=...&quality=good&open=<id>``), so a filtered view can be bookmarked or shared.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from magpie_exp.shards import ShardStore

KEPT_LIMIT = 3000
DROPPED_LIMIT = 1000
TEXT_LIMIT = 6000  # characters of one turn's content (and of its reasoning) on the page; the export has all
# filters shown where the records have the field: (tag, label)
FILTERS = [("input_quality", "quality"), ("difficulty", "difficulty"), ("task_category", "category"),
           ("safety", "safety"), ("language", "language"), ("contaminated", "contaminated")]
COLUMNS = ["input_quality", "difficulty", "task_category", "safety", "language", "reward"]


def _cut(text: str) -> str:
    if len(text) <= TEXT_LIMIT:
        return text
    return f"{text[:TEXT_LIMIT]}\n[... {len(text) - TEXT_LIMIT} more characters, in the stage's export]"


def _row(record: dict[str, Any], status: str, reason: str | None) -> dict[str, Any]:
    tags = {k: v for k, v in (record.get("tags") or {}).items()
            if isinstance(v, (str, int, float, bool)) or v is None}
    messages = [{"role": m.get("role"), "content": _cut(m.get("content") or ""),
                 **({"reasoning": _cut(m["reasoning_content"])} if m.get("reasoning_content") else {})}
                for m in record.get("messages") or []]
    return {"id": record.get("id"), "status": status, "reason": reason, "messages": messages, "tags": tags}


def explorer_rows(curate_dir: str | None, tag_dir: str | None, other_dir: str | None) -> tuple[list[dict[str, Any]], str]:
    """The rows the explorer shows and a line saying what they are (bounded: see the module docstring)."""
    rows: list[dict[str, Any]] = []
    if curate_dir and (Path(curate_dir) / "manifest.json").exists():
        kept_total = 0
        for record in ShardStore.open(Path(curate_dir)).records():
            kept_total += 1
            if len(rows) < KEPT_LIMIT:
                rows.append(_row(record, "kept", None))
        rejected_file = Path(curate_dir) / "rejected.jsonl"
        rejected = []
        dropped_total = 0
        if rejected_file.exists():
            with rejected_file.open() as handle:
                for line in handle:
                    if line.strip():
                        dropped_total += 1
                        if len(rejected) < DROPPED_LIMIT:
                            rejected.append(json.loads(line))
        full: dict[str, dict[str, Any]] = {}
        wanted = {r["id"] for r in rejected}
        if wanted and tag_dir and (Path(tag_dir) / "manifest.json").exists():
            for record in ShardStore.open(Path(tag_dir)).records():
                if record.get("id") in wanted:
                    full[record["id"]] = record
                    if len(full) == len(wanted):
                        break
        for r in rejected:
            record = full.get(r["id"]) or {"id": r["id"], "tags": r.get("tags"),
                                            "messages": [{"role": "user", "content": r.get("instruction", "")}]}
            rows.append(_row(record, "dropped", r.get("reason")))
        shown_kept = min(kept_total, KEPT_LIMIT)
        note = (f"{shown_kept} of {kept_total} kept records and {len(rejected)} of {dropped_total} dropped ones"
                + (" (the first ones; the page holds at most "
                   f"{KEPT_LIMIT} kept and {DROPPED_LIMIT} dropped)" if shown_kept < kept_total or len(rejected) < dropped_total else ""))
        return rows, note
    folder = tag_dir or other_dir
    total = 0
    if folder and (Path(folder) / "manifest.json").exists():
        for record in ShardStore.open(Path(folder)).records():
            total += 1
            if len(rows) < KEPT_LIMIT:
                rows.append(_row(record, "", None))
    return rows, f"{len(rows)} of {total} records (no curate step in this run)"


SCRIPT = r"""
(function(){
const rows = JSON.parse(document.getElementById('explorer-data').textContent);
const $ = id => document.getElementById(id);
const filters = [...document.querySelectorAll('#explorer [data-field]')];
const text = r => r.messages.map(m => m.content + ' ' + (m.reasoning || '')).join(' ').toLowerCase();
rows.forEach(r => { r._text = text(r) + ' ' + r.id.toLowerCase(); });
const esc = s => String(s == null ? '' : s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function state(){
  const s = new URLSearchParams();
  if ($('ex-q').value) s.set('q', $('ex-q').value);
  filters.forEach(f => { if (f.value) s.set(f.dataset.key, f.value); });
  ['ex-rmin','ex-rmax'].forEach(id => { if ($(id).value) s.set(id.slice(3), $(id).value); });
  if (current) s.set('open', current);
  history.replaceState(null, '', '#' + s.toString());
}
let current = null;
function shown(r){
  const q = $('ex-q').value.toLowerCase().trim();
  if (q && !r._text.includes(q)) return false;
  for (const f of filters) {
    if (!f.value) continue;
    const v = f.dataset.field === 'status' ? r.status : r.tags[f.dataset.field];
    if (String(v) !== f.value) return false;
  }
  const reward = r.tags.reward, lo = parseFloat($('ex-rmin').value), hi = parseFloat($('ex-rmax').value);
  if (!isNaN(lo) && !(typeof reward === 'number' && reward >= lo)) return false;
  if (!isNaN(hi) && !(typeof reward === 'number' && reward <= hi)) return false;
  return true;
}
function render(){
  const list = rows.filter(shown);
  $('ex-count').textContent = list.length + ' of ' + rows.length + ' rows';
  $('ex-body').innerHTML = list.map(r => '<tr data-id="' + esc(r.id) + '" class="ex-row ' + esc(r.status) + '">' +
    '<td>' + esc(r.status) + '</td><td class="ex-text">' + esc((r.messages.find(m => m.role === 'user') || {content: ''}).content.slice(0, 240)) + '</td>' +
    COLUMNS.map(c => '<td>' + esc(r.tags[c]) + '</td>').join('') + '<td>' + esc(r.reason) + '</td></tr>').join('');
  open(current);
  state();
}
function open(id){
  current = id;
  const r = rows.find(x => x.id === id);
  if (!r) { $('ex-detail').innerHTML = '<p class="muted">click a row to read the conversation</p>'; current = null; return; }
  $('ex-detail').innerHTML = '<h3 id="ex-open">' + esc(r.id) + ' (' + esc(r.status || 'record') + ')</h3>' +
    (r.reason ? '<p class="ex-reason">dropped: ' + esc(r.reason) + '</p>' : '') +
    r.messages.map(m => '<div class="ex-msg ' + esc(m.role) + '"><b>' + esc(m.role) + '</b>' +
      (m.reasoning ? '<details><summary>reasoning</summary><pre>' + esc(m.reasoning) + '</pre></details>' : '') +
      '<pre>' + esc(m.content) + '</pre></div>').join('') +
    '<details><summary>tags</summary><pre>' + esc(JSON.stringify(r.tags, null, 1)) + '</pre></details>';
}
const COLUMNS = JSON.parse(document.getElementById('explorer-columns').textContent);
const start = new URLSearchParams(location.hash.slice(1));
$('ex-q').value = start.get('q') || '';
filters.forEach(f => { f.value = start.get(f.dataset.key) || ''; });
$('ex-rmin').value = start.get('rmin') || ''; $('ex-rmax').value = start.get('rmax') || '';
current = start.get('open');
[...filters, $('ex-q'), $('ex-rmin'), $('ex-rmax')].forEach(e => e.addEventListener('input', render));
$('ex-body').addEventListener('click', e => { const tr = e.target.closest('tr'); if (tr) { open(tr.dataset.id); state(); } });
render();
})();
"""

CSS = """
#explorer .ex-controls{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin:.5rem 0}
#explorer label{font-size:.8rem;color:#555;display:flex;flex-direction:column}
#explorer input,#explorer select{font-size:.85rem;padding:.15rem .3rem}
#explorer .ex-wrap{max-height:32rem;overflow:auto;border:1px solid #ddd}
#explorer table{margin:0;width:100%;table-layout:fixed}#explorer td{overflow-wrap:anywhere}
#explorer .ex-text{width:40%}#explorer tr.ex-row{cursor:pointer}#explorer tr.ex-row:hover{background:#f0f4ff}
#explorer tr.dropped td:first-child{color:#b00020}
#ex-detail pre{white-space:pre-wrap;max-height:none}#ex-detail .ex-msg{margin:.4rem 0}.ex-reason{color:#b00020}
"""


def _script_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


def explorer_html(rows: list[dict[str, Any]], note: str) -> str:
    """The explorer section: controls, the table, the open record, the data and the script (no network)."""
    present = {k for r in rows for k in r["tags"]}
    controls = ['<label>search<input id="ex-q" type="search" placeholder="text or id"></label>']
    if any(r["status"] for r in rows):
        controls.append('<label>status<select data-field="status" data-key="status"><option value="">all</option>'
                        '<option>kept</option><option>dropped</option></select></label>')
    for field, label in FILTERS:
        if field not in present:
            continue
        values = sorted({str(r["tags"][field]) for r in rows if field in r["tags"]})
        options = "".join(f"<option>{html.escape(v)}</option>" for v in values)
        controls.append(f'<label>{label}<select data-field="{field}" data-key="{label}"><option value="">all</option>'
                        f"{options}</select></label>")
    controls.append('<label>reward from<input id="ex-rmin" type="number" step="any"></label>'
                    '<label>to<input id="ex-rmax" type="number" step="any"></label>')
    head = "".join('<th class="ex-text">instruction</th>' if c == "instruction" else f"<th>{html.escape(c)}</th>"
                   for c in ["status", "instruction", *COLUMNS, "drop reason"])
    return (f'<section id="explorer"><h2>Explore the data</h2><p class="muted">{html.escape(note)}; filters, search '
            "and the open record are kept in the address</p>"
            f'<div class="ex-controls">{"".join(controls)}<span id="ex-count" class="muted"></span></div>'
            f'<div class="ex-wrap"><table><thead><tr>{head}</tr></thead><tbody id="ex-body"></tbody></table></div>'
            '<div id="ex-detail"></div>'
            f'<script type="application/json" id="explorer-data">{_script_json(rows)}</script>'
            f'<script type="application/json" id="explorer-columns">{_script_json(COLUMNS)}</script>'
            f"<script>{SCRIPT}</script></section>")
