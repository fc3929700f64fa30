"""Static HTML reports: one page per pipeline run (``<run dir>/report.html``) and one per sweep (``index.html``).

A run report has the stages (folder, cache hit, time), dataset statistics and the tag and curate plots, sample
records with their tags, kept and dropped counts per filter reason, training curves and the evaluation table.
Images are embedded (base64), so the page is one file that reads offline. The sweep page, written by the Hydra
callback ``SweepReport`` at the end of a multirun, puts every job's scores side by side with a link to its report,
and plots each score and data-side number against the swept settings (``ablation.py``).
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from magpie_exp.files import read_json

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}td,th{border:1px solid #ddd;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}.hit{color:#2a7a2a}.ran{color:#555}.failed{color:#b00020}
.plots{display:flex;flex-wrap:wrap;gap:.8rem}.plots figure{margin:0;width:520px;max-width:100%}.plots img{width:100%;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555}pre{background:#f7f7f9;padding:.6rem;overflow:auto;font-size:.8rem;max-height:24rem}
.muted{color:#666;font-size:.85rem}details{margin:.3rem 0}.wide figure{margin:0}.wide img{width:100%;border:1px solid #eee}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{_esc(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)[:300]
    return "" if v is None else str(v)


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}"><figcaption>{_esc(caption)}</figcaption></figure>'


def _stats(folder: str | None) -> dict[str, Any]:
    return read_json(Path(folder) / "stats.json") if folder else {}


def _markdown_table(text: str) -> str:
    """The evaluation results table (Markdown from ``results_table``) as HTML."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if len(lines) < 3:
        return '<p class="muted">no scores</p>'
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f'<td class="num">{_esc(c)}</td>' if i else f"<td>{_esc(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in cells[2:])
    notes = "".join(f"<li>{_esc(line[2:])}</li>" for line in text.splitlines() if line.startswith("- "))
    return f"<table><tr>{head}</tr>{body}</table>" + (f'<ul class="muted">{notes}</ul>' if notes else "")


def training_plot(steps: dict[str, dict[str, Any]], out: Path) -> Path | None:
    """Loss against step for each training run (SFT, DPO) in one PNG."""
    curves = {name: s.get("loss") or [] for name, s in steps.items()}
    if not any(curves.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.0), squeeze=False)
    for ax, (name, points) in zip(axes[0], curves.items(), strict=True):
        ax.plot([p["step"] for p in points], [p["loss"] for p in points], marker="o", ms=3)
        ax.set_title(f"{name} loss")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _samples(folder: str | None, limit: int) -> list[dict[str, Any]]:
    if not folder:
        return []
    shards = sorted((Path(folder) / "shards").glob("*.jsonl"))
    rows = []
    for shard in shards:
        with shard.open() as handle:
            for line in handle:
                record = json.loads(line)
                messages = record.get("messages", [])
                user = next((m["content"] for m in messages if m["role"] == "user"), "")
                answer = next((m["content"] for m in messages if m["role"] == "assistant"), "")
                tags = {k: v for k, v in (record.get("tags") or {}).items() if k not in ("errors",) and not isinstance(v, (list, dict))}
                rows.append({"id": record.get("id"), "instruction": user[:300], "response": answer[:300], **tags})
                if len(rows) >= limit:
                    return rows
    return rows


def _decontam(tag: dict[str, Any], cur: dict[str, Any]) -> str:
    """Records matching an evaluation prompt, by benchmark, and whether the recipe dropped them."""
    dc = tag.get("decontam")
    if not dc:
        return '<p class="muted" id="decontam">decontamination: the decontam tagger did not run</p>'
    dropped = (cur.get("rule_failures") or {}).get("decontam: matches an evaluation prompt", 0)
    against = ", ".join(f"{k} ({v} prompts)" for k, v in (dc.get("against") or {}).items())
    unchecked = ", ".join(dc.get("unchecked") or {})
    rows = [{"benchmark": k, "records matching": v} for k, v in (dc.get("by_benchmark") or {}).items()]
    head = (f'<h3 id="decontam">Decontamination</h3><p>{dc.get("contaminated", 0)} of {dc.get("checked", 0)} records '
            f"match an evaluation prompt (checked against {_esc(against)}"
            + (f"; not checked: {_esc(unchecked)}" if unchecked else "") + "). "
            + (f"The recipe drops {dropped} of them as contaminated." if cur and dropped else
               "The recipe keeps them (curate.decontaminate=true drops them)." if cur and dc.get("contaminated") else "")
            + "</p>")
    return head + (_table(rows) if rows else "")


def write_run_report(run_dir: Path, cfg: Any, records: list[Any], scores: dict[str, Any], tracker: Any,
                     failed: bool = False) -> Path:
    """Write ``report.html`` for one pipeline run; returns its path."""
    from magpie_exp.config import as_plain
    from magpie_exp.evaluation.tables import results_table
    from magpie_exp.explorer import CSS as EXPLORER_CSS
    from magpie_exp.explorer import explorer_html, explorer_rows
    from magpie_exp.tracking import scrub

    steps = {r.step: r for r in records}
    folder = {name: r.folder for name, r in steps.items()}
    parts = [f"<h1>magpie-exp run: {_esc(cfg.experiment_name)}</h1>",
             f'<p class="muted">{_esc(run_dir)} &middot; generator {_esc(cfg.generator.name)} &middot; recipe '
             f'{_esc(cfg.curate.name)} &middot; SFT {_esc(cfg.sft.name)} &middot; DPO {_esc(cfg.dpo.name)}'
             + (' &middot; <span class="failed">run failed; this page shows the stages that finished</span>' if failed else "")
             + "</p>"]

    parts.append('<section id="stages"><h2>Stages</h2>')
    parts.append(_table([{"stage": r.step, "result": "cache hit" if r.cache_hit else "ran", "seconds": round(r.seconds, 1),
                          "folder": r.folder} for r in records]))
    parts.append("</section>")

    gen, tag, cur = _stats(folder.get("generate")), _stats(folder.get("tag")), _stats(folder.get("curate"))
    parts.append('<section id="dataset"><h2>Dataset</h2>')
    summary = []
    if gen:
        summary.append({"stage": "generate", "records": gen.get("records"), "multi-turn": gen.get("multi_turn_records"),
                        "tokens/s": gen.get("tokens_per_s"), "dropped": gen.get("dropped")})
    if tag:
        summary.append({"stage": "tag", "records": tag.get("records"), "failures": tag.get("failures")})
    if cur:
        summary.append({"stage": "curate", "records": cur.get("kept"), "kept fraction": cur.get("kept_fraction"),
                        "recipe": cur.get("recipe")})
    for row, stats in zip(summary, [s for s in (gen, tag, cur) if s], strict=True):
        div = stats.get("diversity") or {}
        row.update({"distinct-2": div.get("distinct_2"), "category entropy (bits)": div.get("category_entropy_bits"),
                    "cosine distance": div.get("mean_cosine_distance"), "Vendi": div.get("vendi_score")})
    parts.append(_table(summary))
    parts.append('<p class="muted">diversity on a sample of at most 2000 records chosen by id hash '
                 '(magpie_exp/diversity.py); embedding figures where the embedding tagger ran</p>')
    parts.append(_decontam(tag, cur))
    figures = []
    for name, stats in (("tag", tag), ("curate", cur)):
        for plot, path in (stats.get("plots") or {}).items():
            if Path(path).exists():
                figures.append(_img(Path(path), f"{name}: {plot}"))
    parts.append(f'<div class="plots">{"".join(figures)}</div>' if figures else '<p class="muted">no plots</p>')
    parts.append("</section>")

    parts.append('<section id="samples"><h2>Sample records with their tags</h2>')
    parts.append(_table(_samples(folder.get("curate") or folder.get("tag") or folder.get("generate"), 8)))
    parts.append("</section>")
    parts.append(explorer_html(*explorer_rows(folder.get("curate"), folder.get("tag"), folder.get("generate"))))

    parts.append('<section id="filters"><h2>Kept and dropped, by filter reason</h2>')
    if cur:
        rows = [{"outcome": "kept", "records": cur.get("kept")}] + [{"outcome": f"dropped: {k}", "records": v}
                                                                  for k, v in (cur.get("dropped") or {}).items()]
        parts.append(_table(rows))
        if cur.get("rule_failures"):
            parts.append("<p class='muted'>every rule's failures (a record can fail several):</p>")
            parts.append(_table([{"rule": k, "records": v} for k, v in cur["rule_failures"].items()]))
    else:
        parts.append('<p class="muted">the curate stage did not run</p>')
    parts.append("</section>")

    parts.append('<section id="training"><h2>Training</h2>')
    train = {name: _stats(folder.get(name)) for name in ("sft", "dpo") if folder.get(name)}
    plot = training_plot(train, run_dir / "plots" / "training.png") if train else None
    parts.append(_table([{"run": n, "recipe": s.get("recipe"), "rows": s.get("rows"), "steps": s.get("steps"),
                          "final loss": s.get("final_loss"), "s/step": s.get("seconds_per_step")} for n, s in train.items()]))
    if plot:
        parts.append(f'<div class="plots">{_img(plot, "training loss")}</div>')
    parts.append("</section>")

    parts.append('<section id="evaluation"><h2>Evaluation</h2>')
    results = [{"model": label, "benchmarks": s} for label, s in scores.items()]
    parts.append(_markdown_table(results_table(results)) if results else '<p class="muted">not evaluated</p>')
    parts.append("</section>")

    parts.append('<section id="config"><h2>Configuration</h2><details><summary>resolved config</summary><pre>'
                 + _esc(json.dumps(scrub(as_plain(cfg)), indent=1)) + "</pre></details></section>")
    if tracker is not None and getattr(tracker, "run_dir", None):
        parts.append(f'<p class="muted">W&amp;B run: {_esc(tracker.run_dir)}</p>')
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>magpie-exp {_esc(cfg.experiment_name)}</title>" \
           f"<style>{CSS}{EXPLORER_CSS}</style></head><body>{''.join(parts)}</body></html>"
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    log.info("report: %s", out)
    return out


def write_sweep_report(sweep_dir: Path) -> Path | None:
    """``index.html`` in a sweep folder: each job's overrides, stage cache hits and scores, linked to its report."""
    from magpie_exp.evaluation.tables import results_table

    jobs = []
    folders = {p.parent for name in ("pipeline.json", "stages.json", "failed.json") for p in sweep_dir.glob(f"*/{name}")}
    for job in sorted(folders, key=lambda p: (len(p.name), p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = []
        if overrides_file.exists():
            import yaml

            overrides = [o for o in yaml.safe_load(overrides_file.read_text()) or [] if not o.startswith("paths.")]
        data = json.loads((job / "pipeline.json").read_text()) if (job / "pipeline.json").exists() else None
        failed = json.loads((job / "failed.json").read_text()) if (job / "failed.json").exists() else None
        jobs.append((job, overrides, data, failed))
    if not jobs:
        return None
    rows, results = [], []
    for job, overrides, data, failed in jobs:
        hits = [s["step"] for s in data["steps"] if s["cache_hit"]] if data else None
        report = job / "report.html"
        steps = {s["step"]: s["folder"] for s in data["steps"]} if data else {}
        curated = _stats(steps.get("curate"))
        div = curated.get("diversity") or {}
        rows.append({"job": job.name, "overrides": " ".join(overrides),
                     "status": f"failed: {failed['error']}" if failed else "finished",
                     "cache hits": "-" if hits is None else ", ".join(hits) or "none",  # "-": a one-stage job
                     "kept": curated.get("kept", ""), "distinct-2": div.get("distinct_2", ""), "Vendi": div.get("vendi_score", ""),
                     "report": report.relative_to(sweep_dir).as_posix() if report.exists() else ""})
        for label, scores in (data or {}).get("scores", {}).items():
            results.append({"model": f"{job.name}: {' '.join(overrides)} [{label}]", "benchmarks": scores})
    from magpie_exp.ablation import ablation_plot, job_point, swept_keys

    points = [job_point(overrides, data) for _, overrides, data, _ in jobs if data]
    plot = ablation_plot(points, sweep_dir / "ablation.png") if len(points) > 1 else None
    swept = swept_keys(points)
    ablation = (f"<section id='ablation'><h2>Ablation</h2><p class='muted'>each score against {_esc(swept[0])}"
                + (f", one line per {_esc(', '.join(swept[1:]))}" if swept[1:] else "")
                + "; bars: 95% intervals (Arena-Hard's bootstrap; a seeded bootstrap over the items for IFEval and "
                "MT-Bench); data: the curated set (kept, distinct-2, Vendi) and the tag stage's contamination</p>"
                f"<div class='wide'>{_img(plot, 'ablation')}</div></section>") if plot else ""
    table = _table(rows)
    for row in rows:  # make the report column a link
        if row["report"]:
            table = table.replace(f"<td>{_esc(row['report'])}</td>", f'<td><a href="{_esc(row["report"])}">report</a></td>', 1)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>magpie-exp sweep {_esc(sweep_dir.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>magpie-exp sweep</h1><p class='muted'>{_esc(sweep_dir)}</p>"
            f"<section id='jobs'><h2>Jobs</h2>{table}</section>{ablation}"
            f"<section id='evaluation'><h2>Evaluation</h2>{_markdown_table(results_table(results)) if results else ''}</section>"
            "</body></html>")
    out = sweep_dir / "index.html"
    out.write_text(page, encoding="utf-8")
    log.info("sweep report: %s", out)
    return out


class SweepReport(Callback):
    """Hydra callback (``hydra.callbacks.sweep_report``): the sweep page once every job of a multirun is done."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        page = None
        try:
            page = write_sweep_report(sweep)
        except Exception as exc:  # a report must never fail a finished sweep
            log.warning("no sweep report: %s", exc)
        failed = sorted(sweep.glob("*/failed.json"), key=lambda p: (len(p.parent.name), p.parent.name))
        if failed:  # the other members ran; the command still says that the sweep is not whole
            import sys

            first = json.loads(failed[0].read_text())
            # printed, not logged: the last member's log handlers are gone by now
            print(f"{len(failed)} sweep member(s) failed ({', '.join(p.parent.name for p in failed)}); the first: "
                  f"{first['error']}" + (f"; see {page}" if page else ""), file=sys.stderr)
            sys.exit(max(json.loads(p.read_text()).get("exit_code", 1) for p in failed))
