"""Screening fine-tuning data with persona vectors: projection difference per sample and dataset."""

from screening.base_answers import AnswerCache, BaseAnswers, BaseAnswerSettings
from screening.data import ScreenRow, SkippedRow, classify_rows, conversation_parts, read_rows
from screening.policy import FlagPolicy
from screening.scorer import Screener, ScreeningConfig, ScreenResult, TraitScores

__all__ = ["AnswerCache", "BaseAnswers", "BaseAnswerSettings", "FlagPolicy", "ScreenResult", "ScreenRow",
           "Screener", "ScreeningConfig", "SkippedRow", "TraitScores", "classify_rows",
           "conversation_parts", "read_rows"]
