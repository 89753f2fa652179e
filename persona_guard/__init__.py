"""persona-guard core: models, activations, persona vectors, steering and monitoring."""

from persona_guard.activations import capture_activations
from persona_guard.encoding import EncodedSample, encode_chat, encode_conversation, encode_text
from persona_guard.errors import PersonaGuardError
from persona_guard.models import DEFAULT_MODEL, DecoderLayers, LoadedModel, decoder_layers, load_model
from persona_guard.monitor import PersonaMonitor, Threshold
from persona_guard.steering import Steering
from persona_guard.vectors import PersonaVector

__all__ = [
    "DEFAULT_MODEL", "DecoderLayers", "EncodedSample", "LoadedModel", "PersonaGuardError", "PersonaMonitor",
    "PersonaVector", "Steering", "Threshold", "capture_activations", "decoder_layers", "encode_chat",
    "encode_conversation", "encode_text", "load_model",
]
__version__ = "0.1.0"
