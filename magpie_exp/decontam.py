"""Decontamination: which generated conversations reproduce a prompt of an evaluation set.

Template-prefix prompting can regurgitate what a model was trained on, benchmark prompts included, and the loop
scores its models on IFEval, MT-Bench, Arena-Hard and AlpacaEval. So every user turn (and, with
``tag.decontam.responses``, every answer) is compared with the prompts of every evaluation set found locally
(``evaluation.data_dir``, the copies shipped in ``evals/``, the cache; AlpacaEval once downloaded by an
evaluation) and of every ``evaluation.lm_eval.local_data`` file. Nothing is downloaded here: a set that is not
available is listed as unchecked in the stage's stats, never silently skipped.

Two checks, either of which marks a record ``contaminated``:

- **word n-grams** (lower-cased ``\\w+`` words; 13-grams, as the Tulu 3 and SmolLM2 decontamination): the share of
  the shorter text's n-grams that the other holds, so an instruction that contains a benchmark prompt, or is a
  long piece of one, scores 1.0. A text shorter than n words is one n-gram of its own length, so a short prompt
  is caught only when copied whole (a generic four-word phrase inside a longer instruction is not a copy).
- **embedding similarity** (cosine, the tag stage's embedder): catches reworded and reordered copies. The
  benchmark prompts' vectors are computed once per embedder and cached in ``<paths.cache_dir>/decontam/``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from magpie_exp.config import ConfigError, DecontamConfig
from magpie_exp.files import atomic_write_bytes

log = logging.getLogger(__name__)
_WORD = re.compile(r"\w+")
BENCHMARKS = ("ifeval", "mt_bench", "arena_hard", "alpaca_eval")
# Columns that hold the prompt in an lm-eval task's local data file (the hub datasets' own names), in order.
PROMPT_COLUMNS = ("prompt", "question", "problem", "instruction", "input", "query", "text")


@dataclass(frozen=True)
class Prompt:
    benchmark: str
    item: str
    text: str


@dataclass(frozen=True)
class Match:
    benchmark: str | None  # the item that made the text contaminated (or its nearest, when it is clean)
    item: str | None
    ngram_overlap: float
    similarity: float | None
    method: str | None  # ngram | embedding | None (clean)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The n-grams of ``tokens``; a text shorter than ``n`` words is one n-gram of its own length."""
    if not tokens:
        return set()
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


# -- the prompts of every evaluation set --------------------------------------------------------------------------

def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path.name} holds a JSON {type(data).__name__}, not a list of rows")
        return data
    if path.suffix == ".csv":
        with path.open(encoding="latin-1", newline="") as handle:
            header = handle.readline()
            handle.seek(0)
            return list(csv.DictReader(handle, delimiter=";" if header.count(";") > header.count(",") else ","))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(f"unsupported file type {path.suffix}")


def _lm_eval_prompts(task: str, source: str) -> list[Prompt]:
    path = Path(source).expanduser()
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    prompts = []
    for file in files:
        rows = _rows(file)
        column = next((c for c in PROMPT_COLUMNS if rows and isinstance(rows[0].get(c), str)), None)
        if column is None:
            raise ValueError(f"{file} has none of the prompt columns {list(PROMPT_COLUMNS)}")
        stem = f"{file.stem}:" if path.is_dir() else ""
        prompts += [Prompt(f"lm_eval:{task}", f"{stem}{i}", str(r[column])) for i, r in enumerate(rows) if r.get(column)]
    return prompts


def benchmark_prompts(dc: DecontamConfig, data_dir: str | None, cache_dir: Path,
                      local_data: dict[str, str]) -> tuple[list[Prompt], dict[str, int], dict[str, str]]:
    """Every prompt of the configured sets found locally: (prompts, items per set, unchecked set -> why)."""
    from magpie_exp.evaluation.data import local_path

    files = {"ifeval": "ifeval", "mt_bench": "mt_bench_questions", "arena_hard": "arena_hard_questions",
             "alpaca_eval": "alpaca_eval_reference"}
    prompts: list[Prompt] = []
    unchecked: dict[str, str] = {}
    for name in dc.benchmarks:
        path = local_path(files[name], data_dir, cache_dir)
        if path is None:
            unchecked[name] = "not available locally (an evaluation that uses it downloads it)"
            continue
        try:
            rows = _rows(path)
            if name == "ifeval":
                prompts += [Prompt(name, str(r["key"]), r["prompt"]) for r in rows]
            elif name == "mt_bench":  # every turn is a prompt: item "81" is turn 1, "81.2" turn 2
                prompts += [Prompt(name, f"{r['question_id']}" + (f".{t + 1}" if t else ""), text)
                            for r in rows for t, text in enumerate(r["turns"])]
            elif name == "arena_hard":
                prompts += [Prompt(name, str(r["uid"]), r["prompt"]) for r in rows]
            else:
                prompts += [Prompt(name, str(i), r["instruction"]) for i, r in enumerate(rows)]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"tag.decontam.benchmarks: {path} is not the {name} file this project reads "
                              f"({exc.__class__.__name__}: {exc}); replace it with the original") from exc
    if dc.lm_eval_local_data:
        for task, source in local_data.items():
            try:
                prompts += _lm_eval_prompts(task, source)
            except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
                unchecked[f"lm_eval:{task}"] = f"unreadable ({exc.__class__.__name__}: {str(exc)[:120]})"
    counts = dict(Counter(p.benchmark for p in prompts))
    return prompts, counts, unchecked


# -- matching -----------------------------------------------------------------------------------------------------

class Index:
    """The n-grams and (optionally) the embeddings of a list of prompts, and the best match of a text."""

    def __init__(self, prompts: Sequence[Prompt], n: int, vectors: np.ndarray | None = None) -> None:
        self.prompts, self.n, self.vectors = list(prompts), n, vectors
        self.grams: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self.sizes: list[int] = []
        for i, prompt in enumerate(self.prompts):
            grams = ngrams(words(prompt.text), n)
            self.sizes.append(len(grams))
            for gram in grams:
                self.grams[gram].append(i)

    def overlap(self, text: str) -> tuple[int | None, float]:
        """The prompt sharing the largest share of n-grams with ``text``, and that share (of the shorter text)."""
        own = ngrams(words(text), self.n)
        hits: Counter = Counter()
        for gram in own:
            hits.update(self.grams.get(gram, ()))
        best, share = None, 0.0
        for i, shared in hits.items():
            value = shared / min(self.sizes[i], len(own))
            if value > share or (value == share and best is not None and i < best):
                best, share = i, value
        return best, share

    def match(self, texts: Sequence[str], vectors: np.ndarray | None, ngram_min: float | None,
              similarity_min: float | None) -> Match:
        """The strongest evidence over ``texts`` (a record's turns): an n-gram copy first, then a near embedding."""
        best_ngram: tuple[int | None, float] = (None, 0.0)
        for text in texts:
            found = self.overlap(text)
            if found[1] > best_ngram[1]:
                best_ngram = found
        best_sim: tuple[int | None, float | None] = (None, None)
        if vectors is not None and self.vectors is not None and len(vectors) and len(self.vectors):
            sims = vectors @ self.vectors.T
            row, col = np.unravel_index(int(np.argmax(sims)), sims.shape)
            best_sim = (int(col), round(float(sims[row, col]), 4))
        share = round(best_ngram[1], 4)
        if ngram_min is not None and best_ngram[0] is not None and share >= ngram_min:
            hit, method = best_ngram[0], "ngram"
        elif similarity_min is not None and best_sim[0] is not None and best_sim[1] >= similarity_min:
            hit, method = best_sim[0], "embedding"
        else:
            hit, method = (best_ngram[0] if best_ngram[0] is not None else best_sim[0]), None
        prompt = self.prompts[hit] if hit is not None else None
        return Match(prompt.benchmark if prompt else None, prompt.item if prompt else None, share, best_sim[1], method)


def prompt_vectors(prompts: Sequence[Prompt], encode: Callable[[list[str]], np.ndarray], embedder_id: str,
                   cache_dir: Path) -> np.ndarray:
    """Embeddings of the prompts, computed once per (embedder, prompt list) and kept in the cache folder."""
    digest = hashlib.sha256(json.dumps([embedder_id, [p.text for p in prompts]]).encode()).hexdigest()[:16]
    path = cache_dir / "decontam" / f"{digest}.npy"
    if path.exists():
        try:
            vectors = np.load(path)
            if vectors.shape[0] == len(prompts):
                return vectors
        except (OSError, ValueError):
            pass
        log.warning("decontam: %s is damaged; computing the benchmark embeddings again", path)
    log.info("decontam: embedding %d evaluation prompts once (kept in %s)", len(prompts), path.parent)
    vectors = encode([p.text for p in prompts]).astype(np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:  # a read-only cache costs time, not correctness
        log.warning("decontam: cannot cache the benchmark embeddings in %s (%s)", path.parent, exc)
    return vectors


class Counts:
    """Counts over tagged records, gathered in the tag stage's one pass over its output: checked, contaminated, by
    benchmark, by method."""

    def __init__(self) -> None:
        self.checked = self.contaminated = 0
        self.by_benchmark: Counter = Counter()
        self.by_method: Counter = Counter()

    def add(self, tags: dict[str, Any]) -> None:
        if tags.get("contaminated") is None:
            return
        self.checked += 1
        if tags["contaminated"]:
            self.contaminated += 1
            self.by_benchmark[tags.get("contam_benchmark")] += 1
            self.by_method[tags.get("contam_method")] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "contaminated": self.contaminated,
                "by_benchmark": dict(self.by_benchmark.most_common()), "by_method": dict(self.by_method.most_common())}
