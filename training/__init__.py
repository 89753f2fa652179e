"""Fine-tuning with persona vectors: preventative steering and trait-drift monitoring callbacks,
YAML recipes and the evaluation that compares training arms."""

from persona_guard.training.drift import ProbeSettings, TraitDriftCallback
from persona_guard.training.steering_callback import (
    PreventativeSteeringCallback,
    SteeringSettings,
    incremental_directions,
    train_with_cleanup,
)

__all__ = [
    "PreventativeSteeringCallback",
    "ProbeSettings",
    "SteeringSettings",
    "TraitDriftCallback",
    "incremental_directions",
    "train_with_cleanup",
]
