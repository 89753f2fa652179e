"""Turning projection differences into ranks, z-scores and flags."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from persona_guard.errors import PersonaGuardError
from persona_guard.schema import bounds, check


@dataclass(frozen=True)
class FlagPolicy:
    """Which rows to flag, per trait. Give exactly one of ``top_k``, ``top_percent``, ``threshold``
    or ``percentile`` (a percentile of dP over a reference benign set, as the paper calibrated);
    nothing at all means ``top_percent=5``."""

    top_k: int | None = field(default=None, metadata=bounds(ge=0))  # 0: no dP flags (judge-only with "or")
    top_percent: float | None = field(default=None, metadata=bounds(ge=0, le=100))
    threshold: float | None = None
    percentile: float | None = field(default=None, metadata=bounds(ge=0, le=100))

    def __post_init__(self) -> None:
        check(self)
        given = [name for name in ("top_k", "top_percent", "threshold", "percentile")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise PersonaGuardError(f"choose one flagging policy, got {', '.join(given)}")

    @property
    def name(self) -> str:
        if self.top_k is not None:
            return f"top-k {self.top_k}"
        if self.threshold is not None:
            return f"dP > {self.threshold:g}"
        if self.percentile is not None:
            return f"dP > reference p{self.percentile:g}"
        return f"top {self.effective_top_percent:g}%"

    @property
    def effective_top_percent(self) -> float:
        return 5.0 if self.top_percent is None else self.top_percent

    def flags(self, dp: np.ndarray, reference_dp: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
        """Boolean flags for ``dp`` and the dP threshold used (None for rank-based policies)."""
        if self.percentile is not None:
            if reference_dp is None or len(reference_dp) == 0:
                raise PersonaGuardError("a percentile policy needs a reference set (--reference)")
            threshold = float(np.percentile(reference_dp, self.percentile))
            return dp > threshold, threshold
        if self.threshold is not None:
            return dp > self.threshold, self.threshold
        k = self.top_k if self.top_k is not None else int(round(len(dp) * self.effective_top_percent / 100))
        flags = np.zeros(len(dp), dtype=bool)
        flags[descending_order(dp)[:k]] = True
        return flags, None


def descending_order(values: np.ndarray) -> np.ndarray:
    """Indices from the highest value down; ties keep input order (stable)."""
    return np.argsort(-values, kind="stable")


def ranks(values: np.ndarray) -> np.ndarray:
    """1 = highest value."""
    out = np.empty(len(values), dtype=np.int64)
    out[descending_order(values)] = np.arange(1, len(values) + 1)
    return out


def zscores(values: np.ndarray) -> np.ndarray:
    std = values.std()
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)
