"""What the served monitor does per trait: thresholds, calibration statistics and an action.

A policy file (YAML) looks like::

    calibration: {set: benign_heldout.jsonl, percentile: 99.0, conversations: 110}
    webhook: http://127.0.0.1:9000/alerts      # optional, for action: alert
    traits:
      evil:
        vector: vectors/evil.safetensors
        layer: 12                              # optional, default: the vector's default layer
        action: steer                          # log | alert | steer | block
        steer_coef: 4.0                        # steer subtracts steer_coef * vector at its layer
        threshold: {prompt_last: 1.9, response_mean: 2.4}
        calibration: {prompt_last: {mean: 0.3, std: 0.6}, response_mean: {mean: 0.9, std: 0.5}}

``prompt_last`` is the forecast (projection of the last prompt token, read at prefill) and
``response_mean`` the response projection (mean over the answer's tokens); the names are those of
:class:`persona_guard.monitor.PersonaMonitor`. An alert fires when a reading is strictly above its
threshold. ``steer`` and ``block`` act on the forecast, before any token is generated (a streamed
token cannot be taken back); every action also logs and counts the alert.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from persona_guard.errors import PersonaGuardError
from persona_guard.files import write_text_atomic
from persona_guard.io import require_file
from persona_guard.monitor import Threshold

ACTIONS = ("log", "alert", "steer", "block")
READINGS = ("prompt_last", "response_mean")


@dataclass(frozen=True)
class Stats:
    """Mean and standard deviation of a reading over the calibration set."""

    mean: float
    std: float

    def z(self, value: float) -> float:
        return (value - self.mean) / self.std  # std > 0: checked where policies are loaded and calibrated


@dataclass(frozen=True)
class TraitPolicy:
    trait: str
    vector: str | None = None
    layer: int | None = None
    action: str = "log"
    steer_coef: float = 4.0
    threshold: Threshold = field(default_factory=Threshold)
    calibration: dict[str, Stats] = field(default_factory=dict)

    def over(self, reading: str, value: float | None) -> bool:
        limit = getattr(self.threshold, reading)
        return value is not None and limit is not None and value > limit


@dataclass(frozen=True)
class Policy:
    traits: dict[str, TraitPolicy] = field(default_factory=dict)
    webhook: str | None = None
    calibration: dict = field(default_factory=dict)

    def for_trait(self, trait: str) -> TraitPolicy:
        return self.traits.get(trait, TraitPolicy(trait))

    def with_trait(self, policy: TraitPolicy) -> Policy:
        return replace(self, traits={**self.traits, policy.trait: policy})

    # ---- file ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = require_file(path, "policy file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise PersonaGuardError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(data, dict) or not isinstance(data.get("traits", {}), dict):
            raise PersonaGuardError(f"{path}: expected a mapping with a 'traits' mapping")
        traits = {
            name: _trait_from_dict(name, spec, f"{path}: traits.{name}")
            for name, spec in (data.get("traits") or {}).items()
        }
        webhook = data.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            raise PersonaGuardError(f"{path}: 'webhook' must be a URL string")
        return cls(traits=traits, webhook=webhook, calibration=dict(data.get("calibration") or {}))

    def to_dict(self) -> dict:
        out: dict = {}
        if self.calibration:
            out["calibration"] = self.calibration
        if self.webhook:
            out["webhook"] = self.webhook
        out["traits"] = {}
        for name, trait in self.traits.items():
            spec: dict = {"action": trait.action, "steer_coef": trait.steer_coef}
            if trait.vector is not None:
                spec["vector"] = trait.vector
            if trait.layer is not None:
                spec["layer"] = trait.layer
            spec["threshold"] = {k: v for k in READINGS if (v := getattr(trait.threshold, k)) is not None}
            spec["calibration"] = {k: {"mean": s.mean, "std": s.std} for k, s in trait.calibration.items()}
            out["traits"][name] = spec
        return out

    def save(self, path: str | Path) -> Path:
        """Write atomically (:func:`persona_guard.files.write_text_atomic`)."""
        return write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PersonaGuardError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _trait_from_dict(name: str, spec, where: str) -> TraitPolicy:
    if not isinstance(spec, dict):
        raise PersonaGuardError(f"{where}: expected a mapping")
    unknown = set(spec) - {"vector", "layer", "action", "steer_coef", "threshold", "calibration"}
    if unknown:
        raise PersonaGuardError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    action = spec.get("action", "log")
    if action not in ACTIONS:
        raise PersonaGuardError(f"{where}.action: {action!r} is not one of {', '.join(ACTIONS)}")
    threshold = spec.get("threshold") or {}
    calibration = spec.get("calibration") or {}
    for key, mapping in (("threshold", threshold), ("calibration", calibration)):
        if not isinstance(mapping, dict) or set(mapping) - set(READINGS):
            raise PersonaGuardError(f"{where}.{key}: expected a mapping with keys from {', '.join(READINGS)}")
    stats = {}
    for reading, value in calibration.items():
        if not isinstance(value, dict) or set(value) != {"mean", "std"}:
            raise PersonaGuardError(f"{where}.calibration.{reading}: expected {{mean: X, std: Y}}")
        stats[reading] = Stats(
            _number(value["mean"], f"{where}.calibration.{reading}.mean"),
            _number(value["std"], f"{where}.calibration.{reading}.std"),
        )
        if not stats[reading].std > 0:
            raise PersonaGuardError(f"{where}.calibration.{reading}.std: must be > 0 (a z-score divides by it)")
    layer = spec.get("layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise PersonaGuardError(f"{where}.layer: expected an integer, got {layer!r}")
    vector = spec.get("vector")
    if vector is not None and not isinstance(vector, str):
        raise PersonaGuardError(f"{where}.vector: expected a file path")
    return TraitPolicy(
        trait=name,
        vector=vector,
        layer=layer,
        action=action,
        steer_coef=_number(spec.get("steer_coef", 4.0), f"{where}.steer_coef"),
        threshold=Threshold(**{k: _number(v, f"{where}.threshold.{k}") for k, v in threshold.items()}),
        calibration=stats,
    )


@dataclass(frozen=True)
class TraitVerdict:
    """One trait's readings on one answer, as reported in the ``persona_guard`` field."""

    trait: str
    layer: int
    prompt_last: float
    response_mean: float | None
    prompt_last_z: float | None
    response_mean_z: float | None
    alert: bool
    reasons: tuple[str, ...]
    action: str

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "prompt_last": self.prompt_last,
            "prompt_last_z": self.prompt_last_z,
            "response_mean": self.response_mean,
            "response_mean_z": self.response_mean_z,
            "alert": self.alert,
            "reasons": list(self.reasons),
            "action": self.action,
        }


def verdict(policy: TraitPolicy, layer: int, prompt_last: float, response_mean: float | None) -> TraitVerdict:
    """Z-scores against calibration and the alert state of one trait's readings."""
    values = {"prompt_last": prompt_last, "response_mean": response_mean}
    z = {
        k: (policy.calibration[k].z(v) if k in policy.calibration and v is not None else None)
        for k, v in values.items()
    }
    reasons = tuple(f"{k} {v:.4f} > {getattr(policy.threshold, k)}" for k, v in values.items() if policy.over(k, v))
    return TraitVerdict(
        policy.trait,
        layer,
        prompt_last,
        response_mean,
        z["prompt_last"],
        z["response_mean"],
        bool(reasons),
        reasons,
        policy.action,
    )
