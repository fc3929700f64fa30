"""``stage=publish``: a stage's dataset export (generate, tag or curate) to the Hugging Face Hub with
``huggingface_hub``: the dataset card (``export/README.md``) and the Parquet files in the Hub's layout
(``export/data/``), nothing else of the folder.

    magpie-exp stage=publish publish.repo_id=my-org/magpie-smollm2 publish.dry_run=true   # list and check only
    HF_TOKEN=... magpie-exp stage=publish publish.repo_id=my-org/magpie-smollm2            # upload

The folder is ``input`` (a stage folder), else this config's curate folder. The card is parsed with
``huggingface_hub``'s ``DatasetCard`` and its ``configs`` must point at the Parquet files there, in a dry run too.
The token comes from the environment variable ``publish.token_env`` names, never from the config or the command
line. A dry run touches no network; the upload does.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any

from magpie_exp.config import ConfigError, MagpieConfig

PATTERNS = ["README.md", "data/*.parquet"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def export_of(cfg: MagpieConfig) -> Path:
    from magpie_exp.stages.keys import folder

    stage_dir = Path(cfg.input).expanduser() if cfg.input else folder(cfg, "curate")
    export = stage_dir / "export"
    if not (export / "README.md").exists() or not list(export.glob("data/*.parquet")):
        raise ConfigError(f"input: {stage_dir} has no dataset export with a card and Parquet files (export/README.md, "
                          "export/data/*.parquet); give input=<a generate, tag or curate folder> whose export includes "
                          "parquet, or run that stage first")
    return export


def check_card(export: Path) -> dict[str, Any]:
    """The card parsed by ``huggingface_hub``; its ``configs`` must match the Parquet files beside it."""
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(export / "README.md")
    data = card.data.to_dict()
    files = sorted(p.relative_to(export).as_posix() for p in export.glob("data/*.parquet"))
    for config in data.get("configs") or []:
        for entry in config.get("data_files") or []:
            if not any(fnmatch.fnmatch(f, entry["path"]) for f in files):
                raise ConfigError(f"input: the card's data_files path {entry['path']!r} matches none of {files}; "
                                  "export the stage again (its card and Parquet files are written together)")
    if not data.get("configs"):
        raise ConfigError(f"input: {export / 'README.md'} has no configs in its metadata; export the stage again")
    return data


def run_publish(cfg: MagpieConfig) -> dict[str, Any]:
    """Check (and, unless ``publish.dry_run``, upload) a stage's export; returns what was or would be uploaded."""
    pub = cfg.publish
    if not pub.repo_id or not REPO_ID.match(pub.repo_id):
        raise ConfigError(f"publish.repo_id must be <org or user>/<name> (letters, digits, '-', '_', '.'); got {pub.repo_id!r}")
    export = export_of(cfg)
    card = check_card(export)
    files = [{"path": p.relative_to(export).as_posix(), "bytes": p.stat().st_size}
             for pattern in PATTERNS for p in sorted(export.glob(pattern))]
    report: dict[str, Any] = {"repo_id": pub.repo_id, "repo_type": "dataset", "private": pub.private, "folder": str(export),
                              "files": files, "card": {k: card.get(k) for k in ("license", "size_categories", "task_categories")},
                              "dry_run": pub.dry_run}
    if pub.dry_run:
        return report
    token = os.environ.get(pub.token_env)
    if not token:
        raise ConfigError(f"publish.token_env: the environment variable {pub.token_env} is not set; export a Hugging Face "
                          "write token in it (never on the command line), or run with publish.dry_run=true")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(pub.repo_id, repo_type="dataset", private=pub.private, exist_ok=True)
    commit = api.upload_folder(repo_id=pub.repo_id, repo_type="dataset", folder_path=str(export),
                               allow_patterns=PATTERNS, commit_message=pub.commit_message or "magpie-exp export")
    report["commit"] = getattr(commit, "commit_url", str(commit))
    return report


def render(report: dict[str, Any]) -> str:
    head = ("would upload" if report["dry_run"] else "uploaded") + f" to {report['repo_id']} (dataset, " \
        f"{'private' if report['private'] else 'public'}) from {report['folder']}:"
    lines = [head, *(f"  {f['path']}  {f['bytes']} bytes" for f in report["files"]),
             f"card: {report['card']}"]
    if report.get("commit"):
        lines.append(f"commit: {report['commit']}")
    return "\n".join(lines)
