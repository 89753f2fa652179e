"""Baselines the projection difference is compared against in reports and benchmarks.

* random order: what any ranking must beat;
* response-only projection: the vector without the base-answer correction;
* embedding similarity: cosine between the response's sentence embedding and the trait
  description (the offline judge's packaged all-MiniLM-L6-v2, :func:`persona_guard.judges.embed_texts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


def embedding_similarity(texts: Sequence[str], reference: str) -> np.ndarray:
    """Cosine similarity of each text's sentence embedding to ``reference``'s, ``[len(texts)]``."""
    from persona_guard.judges import embed_texts

    return (embed_texts(texts) @ embed_texts([reference])[0]).numpy()
