"""Screening fine-tuning data with persona vectors: projection difference per sample and dataset."""

from persona_guard.rows import DroppedRow, read_rows
from persona_guard.screening.base_answers import AnswerCache, BaseAnswers, BaseAnswerSettings
from persona_guard.screening.data import ScreenRow, classify_rows
from persona_guard.screening.policy import FlagPolicy
from persona_guard.screening.scorer import Screener, ScreeningConfig, ScreenResult, TraitScores

__all__ = ["AnswerCache", "BaseAnswers", "BaseAnswerSettings", "DroppedRow", "FlagPolicy", "ScreenResult",
           "ScreenRow", "Screener", "ScreeningConfig", "TraitScores", "classify_rows", "read_rows"]
