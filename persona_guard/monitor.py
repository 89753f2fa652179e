"""Monitoring: project conversations onto persona vectors and raise alerts on thresholds.

The last prompt token's projection is read *before* the model answers and predicts how strongly
the answer will express the trait (the paper's finite-difference result); the response-mean
projection measures what the answer actually expressed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from persona_guard.activations import capture_activations
from persona_guard.encoding import Message, encode_conversation
from persona_guard.errors import PersonaGuardError
from persona_guard.models import LoadedModel
from persona_guard.projection import Projector
from persona_guard.vectors import PersonaVector, vectors_by_trait


@dataclass
class TraitReading:
    trait: str
    layer: int
    prompt_last: float
    response_mean: float | None
    alert: bool
    alert_reason: str | None = None


@dataclass
class ConversationReading:
    index: int
    traits: dict[str, TraitReading] = field(default_factory=dict)

    @property
    def alerts(self) -> list[str]:
        return [name for name, reading in self.traits.items() if reading.alert]

    def to_dict(self) -> dict:
        return {"index": self.index, "alerts": self.alerts,
                "traits": {name: vars(reading) for name, reading in self.traits.items()}}


@dataclass(frozen=True)
class Threshold:
    """Alert when a projection exceeds a value (``None`` disables that side)."""

    prompt_last: float | None = None
    response_mean: float | None = None


class PersonaMonitor:
    """Score conversations against one or more persona vectors in one forward pass each batch."""

    def __init__(self, model: LoadedModel, vectors: Sequence[PersonaVector], *,
                 layers: Mapping[str, int] | None = None,
                 thresholds: Mapping[str, Threshold] | None = None,
                 batch_size: int = 8) -> None:
        """``layers``: per-trait overrides of each vector's default layer (see :class:`Projector`)."""
        self.vectors = vectors_by_trait(vectors, model, "PersonaMonitor")
        self.projector = Projector.of(self.vectors, layers)
        self.model = model
        self.thresholds = dict(thresholds or {})
        self.batch_size = batch_size

    @property
    def layers(self) -> dict[str, int]:
        """``{trait: layer}``: each vector's default layer unless overridden."""
        return dict(self.projector.layers)

    def read(self, conversations: Sequence[Sequence[Message]], progress: bool = True) -> list[ConversationReading]:
        if not conversations:
            return []
        encoded = [encode_conversation(self.model.tokenizer, c) for c in conversations]
        for index, sample in enumerate(encoded):
            if sample.prompt_length == 0:
                raise PersonaGuardError(f"conversation {index} has no prompt")
        layers = self.projector.capture_layers
        with_response = [i for i, s in enumerate(encoded) if s.response_length > 0]
        prompt_acts = capture_activations(
            self.model, encoded, layers, ("prompt_last",), batch_size=self.batch_size, progress=progress,
            desc="monitor: prompts")["prompt_last"]
        response_acts = capture_activations(
            self.model, [encoded[i] for i in with_response], layers, ("response_mean",),
            batch_size=self.batch_size, progress=progress,
            desc="monitor: responses")["response_mean"] if with_response else None
        response_row = {conv: row for row, conv in enumerate(with_response)}
        prompts = self.projector.project(prompt_acts)
        responses = self.projector.project(response_acts) if response_acts is not None else None
        readings = []
        for index in range(len(encoded)):
            reading = ConversationReading(index)
            for trait in self.vectors:
                layer = self.projector.layers[trait]
                prompt_value = float(prompts[trait][index])
                response_value = (float(responses[trait][response_row[index]])
                                  if responses is not None and index in response_row else None)
                threshold = self.thresholds.get(trait, Threshold())
                reasons = []
                if threshold.prompt_last is not None and prompt_value > threshold.prompt_last:
                    reasons.append(f"prompt_last {prompt_value:.3f} > {threshold.prompt_last}")
                if (threshold.response_mean is not None and response_value is not None
                        and response_value > threshold.response_mean):
                    reasons.append(f"response_mean {response_value:.3f} > {threshold.response_mean}")
                reading.traits[trait] = TraitReading(trait, layer, prompt_value, response_value,
                                                     bool(reasons), "; ".join(reasons) or None)
            readings.append(reading)
        return readings
