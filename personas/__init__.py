"""persona-guard core: models, activations, persona vectors, steering and monitoring."""

from personas.activations import capture_activations
from personas.encoding import EncodedSample, encode_chat, encode_conversation, encode_text
from personas.errors import PersonaGuardError
from personas.models import DEFAULT_MODEL, decoder_layers, load_model
from personas.monitor import PersonaMonitor, Threshold
from personas.steering import Steering
from personas.vectors import PersonaVector

__all__ = [
    "DEFAULT_MODEL", "EncodedSample", "PersonaGuardError", "PersonaMonitor", "PersonaVector",
    "Steering", "Threshold", "capture_activations", "decoder_layers", "encode_chat",
    "encode_conversation", "encode_text", "load_model",
]
__version__ = "0.1.0"
