"""Fine-tuning with persona vectors: preventative steering and trait-drift monitoring callbacks,
YAML recipes and the evaluation that compares training arms.

The names below are imported on first use (PEP 562), so ``persona_guard.training.evaluation`` and the
command line's flag definitions do not pay for TRL / PEFT / the Trainer until a callback is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from persona_guard.training.drift import ProbeSettings, TraitDriftCallback
    from persona_guard.training.steering_callback import (
        PreventativeSteeringCallback,
        SteeringSettings,
        incremental_directions,
        train_with_cleanup,
    )

#: public name -> submodule that defines it
_EXPORTS = {
    "PreventativeSteeringCallback": "steering_callback",
    "ProbeSettings": "drift",
    "SteeringSettings": "steering_callback",
    "TraitDriftCallback": "drift",
    "incremental_directions": "steering_callback",
    "train_with_cleanup": "steering_callback",
}
__all__ = [
    "PreventativeSteeringCallback",
    "ProbeSettings",
    "SteeringSettings",
    "TraitDriftCallback",
    "incremental_directions",
    "train_with_cleanup",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
