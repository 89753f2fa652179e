"""The persona vector value object, its file formats and projection helpers.

A :class:`PersonaVector` holds one direction per residual-stream layer, ``directions[l]`` for
``l = 0 .. n_layers`` (``hidden_states[l]``, see :mod:`persona_guard.models`). Files are a single
``.safetensors`` with the metadata as JSON in its header: no pickle anywhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from persona_guard.errors import PersonaGuardError
from persona_guard.files import atomic_path
from persona_guard.io import loads_strict, require_file
from persona_guard.models import LoadedModel, same_model_id, unwrap_model
from persona_guard.traits import TRAIT_NAME, Trait

FORMAT_VERSION = 1
_METADATA_KEY = "persona_guard"
#: the model id of a vector whose model is not known (``vector import`` without ``--model-id``)
UNKNOWN_MODEL = "unknown"

log = logging.getLogger("persona_guard")
_warned: set[tuple[str, str, str]] = set()  # (trait, vector model id, loaded model id) already warned about


@dataclass
class PersonaVector:
    """Per-layer trait directions (mean trait activation minus mean opposite activation)."""

    trait: str
    model_id: str
    directions: torch.Tensor  # [n_layers + 1, hidden_size], float32
    default_layer: int | None = None
    method: str = "response_mean"
    n_pos: int = 0
    n_neg: int = 0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.trait, str) or not TRAIT_NAME.match(self.trait):
            raise PersonaGuardError(f"persona vector trait {self.trait!r:.80}: must be lowercase letters, digits, "
                                    "'-' or '_' (it names output files)")
        if self.directions.ndim != 2 or self.directions.shape[0] < 2 or self.directions.shape[1] < 1:
            raise PersonaGuardError(
                f"persona vector {self.trait!r}: directions must be [layers + 1, hidden] with at least one "
                f"layer, got shape {tuple(self.directions.shape)}")
        if not self.directions.is_floating_point():
            raise PersonaGuardError(f"persona vector {self.trait!r}: directions must be floating-point numbers, "
                                    f"got {self.directions.dtype}")
        self.directions = self.directions.detach().to(dtype=torch.float32, device="cpu").contiguous()
        bad = ~torch.isfinite(self.directions)
        if bad.any():
            layer, index = (int(i) for i in bad.nonzero()[0])
            raise PersonaGuardError(
                f"persona vector {self.trait!r}: {int(bad.sum())} non-finite values (NaN or infinity), "
                f"first at layer {layer}, index {index}; the file is damaged or was saved from a diverged run")
        if not self.directions.any():
            raise PersonaGuardError(
                f"persona vector {self.trait!r}: every direction is zero, so there is no trait direction to "
                "project on or steer with (the file is damaged, or pos and neg activations were identical)")
        if self.default_layer is not None:
            self.resolve_layer(self.default_layer)

    @property
    def hidden_size(self) -> int:
        return self.directions.shape[1]

    @property
    def num_layers(self) -> int:
        """Number of decoder blocks of the model it was extracted from."""
        return self.directions.shape[0] - 1

    def _check_layer(self, layer: int) -> int:
        if not 0 <= layer <= self.num_layers:
            raise PersonaGuardError(
                f"persona vector {self.trait!r}: layer {layer} out of range 0..{self.num_layers}")
        return layer

    def resolve_layer(self, layer: int | None = None) -> int:
        """``layer`` (default: ``default_layer``) checked: in ``0..num_layers`` and with a non-zero
        direction (a zero row has no direction: projecting on it would divide by zero)."""
        if layer is None:
            if self.default_layer is None:
                raise PersonaGuardError(
                    f"persona vector {self.trait!r} has no default layer; pass one (e.g. --layer)")
            layer = self.default_layer
        self._check_layer(layer)
        if not self.directions[layer].any():
            raise PersonaGuardError(f"persona vector {self.trait!r}: layer {layer} has a zero direction (nothing "
                                    "was extracted there); use a layer with a direction")
        return layer

    def direction(self, layer: int | None = None) -> torch.Tensor:
        return self.directions[self.resolve_layer(layer)]

    def unit(self, layer: int | None = None) -> torch.Tensor:
        """The direction at ``layer`` scaled to norm 1 ``[hidden]`` (computed in float64: a tiny but
        non-zero direction, e.g. of subnormal floats, still gives a unit vector)."""
        direction = self.direction(layer).double()
        return (direction / direction.norm()).float()

    def project(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Scalar projection of ``hidden [..., d]`` on the unit direction (the paper's measure)."""
        return hidden.float() @ self.unit(layer).to(hidden.device)

    def check_compatible(self, hidden_size: int, num_layers: int, what: str = "the model") -> None:
        if (hidden_size, num_layers) != (self.hidden_size, self.num_layers):
            raise PersonaGuardError(
                f"persona vector {self.trait!r} was built for hidden size {self.hidden_size} and "
                f"{self.num_layers} layers, but {what} has hidden size {hidden_size} and "
                f"{num_layers} layers")

    def check_model(self, model: LoadedModel) -> None:
        """Refuse a model of another shape (hidden size, or number of its located layers); warn (one
        line on stderr, once per vector and model) when the vector records another model id than
        ``model``'s (:func:`persona_guard.models.same_model_id`; ``unknown`` never warns): a
        converted or renamed copy is legitimate, another model's directions mean nothing."""
        config: Any = unwrap_model(model.model).config
        self.check_compatible(config.hidden_size, len(model.layers),
                              f"model {getattr(config, 'name_or_path', '') or model.model_id}")
        loaded_ids = [model.model_id, getattr(config, "name_or_path", "") or model.model_id]
        key = (self.trait, self.model_id, model.model_id)
        if self.model_id != UNKNOWN_MODEL and key not in _warned and \
                not any(same_model_id(self.model_id, loaded) for loaded in loaded_ids):
            _warned.add(key)
            log.warning("persona-guard: warning: the %r vector was extracted from model %r, but the model "
                        "loaded is %r (fine for a converted or renamed copy; another model's directions "
                        "mean nothing)", self.trait, self.model_id, model.model_id)

    # ---- files -------------------------------------------------------------------------------

    def metadata_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "trait": self.trait,
            "model_id": self.model_id,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "default_layer": self.default_layer,
            "method": self.method,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(path.suffix + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
        with atomic_path(path) as staging:
            save_file({"directions": self.directions}, str(staging),
                      metadata={_METADATA_KEY: json.dumps(self.metadata_dict())})
        return path

    @classmethod
    def load(cls, path: str | Path) -> PersonaVector:
        """Load a persona-guard ``.safetensors`` vector, or import a paper-format ``.pt`` one."""
        path = require_file(path, "vector file")
        if path.suffix == ".pt":
            return cls.from_original_pt(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = (handle.metadata() or {}).get(_METADATA_KEY)
                directions = handle.get_tensor("directions")
        except Exception as error:  # safetensors raises several unrelated types
            raise PersonaGuardError(f"{path}: not a persona-guard vector file ({error})") from None
        if header is None:
            raise PersonaGuardError(f"{path}: safetensors file has no '{_METADATA_KEY}' metadata")
        meta = _read_header(path, header)
        try:
            vector = cls(trait=meta["trait"], model_id=meta["model_id"], directions=directions,
                         default_layer=meta["default_layer"], method=meta["method"], n_pos=meta["n_pos"],
                         n_neg=meta["n_neg"], metadata=meta["metadata"])
        except PersonaGuardError as error:
            raise PersonaGuardError(f"{path}: {error}") from None
        for name, actual in (("hidden_size", vector.hidden_size), ("num_layers", vector.num_layers)):
            if meta[name] is not None and meta[name] != actual:
                raise PersonaGuardError(f"{path}: the header says {name} {meta[name]} but the directions "
                                        f"tensor has {actual} (shape {tuple(directions.shape)})")
        return vector

    @classmethod
    def from_original_pt(cls, path: str | Path, trait: str | None = None, model_id: str = UNKNOWN_MODEL,
                         default_layer: int | None = None) -> PersonaVector:
        """Import a vector saved by the original persona-vectors code: a ``[layers, hidden]`` tensor
        (one row per ``hidden_states`` entry). Loaded with ``weights_only=True``: no code runs."""
        path = Path(path)
        try:
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise PersonaGuardError(f"{path}: cannot read as a tensor file ({error})".splitlines()[0]) from None
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise PersonaGuardError(f"{path}: expected a [layers, hidden] tensor, got {shape}")
        name = trait or path.stem.split("_")[0]
        try:
            return cls(trait=name, model_id=model_id, directions=tensor, default_layer=default_layer,
                       method="imported", metadata={"source": str(path), "format": "persona_vectors.pt"})
        except PersonaGuardError as error:
            raise PersonaGuardError(f"{path}: {error}") from None

    def export_gguf(self, path: str | Path, layers: list[int] | None = None, coef: float = 1.0,
                    model_hint: str = "llama") -> Path:
        """Write a llama.cpp control vector (``--control-vector`` / ``--control-vector-scaled``).

        llama.cpp adds ``direction.N`` to the output of block ``N`` (0-based, N >= 1), which is our
        layer ``N + 1``; our layer 1 (block 0's output) cannot be expressed and is refused.
        ``layers=None`` exports every layer from 2 to ``num_layers - 1`` (the last entry is
        post-norm and has no block output twin).
        """
        import gguf
        import numpy as np

        layers = list(range(2, self.num_layers)) if layers is None else [self.resolve_layer(l) for l in layers]
        if any(layer < 2 for layer in layers):
            raise PersonaGuardError("llama.cpp control vectors cannot steer layers below 2 "
                                    "(its direction.0 is invalid)")
        scaled = {layer: (coef * self.directions[layer]).numpy().astype(np.float32) for layer in layers}
        if not all(np.isfinite(direction).all() for direction in scaled.values()):
            raise PersonaGuardError(f"coef {coef!r} times the vector is not finite; use a smaller finite coef")
        path = Path(path)
        with atomic_path(path) as staging:
            writer = gguf.GGUFWriter(str(staging), arch="controlvector")
            writer.add_string("controlvector.model_hint", model_hint)
            writer.add_uint32("controlvector.layer_count", len(layers))
            for layer, direction in scaled.items():
                writer.add_tensor(f"direction.{layer - 1}", direction)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        return path


#: Metadata header fields: name -> (accepted types, default when absent; ``...`` = required).
_HEADER_FIELDS: dict[str, tuple[tuple[type, ...], object]] = {
    "format_version": ((int,), 0), "trait": ((str,), ...), "model_id": ((str,), ...),
    "default_layer": ((int, type(None)), None), "method": ((str,), "response_mean"),
    "n_pos": ((int,), 0), "n_neg": ((int,), 0), "metadata": ((dict,), {}),
    # written for readers; checked against the directions tensor when present
    "hidden_size": ((int, type(None)), None), "num_layers": ((int, type(None)), None),
}


def _read_header(path: Path, header: str) -> dict:
    """The ``persona_guard`` metadata header as a dict with every field checked (see ``_HEADER_FIELDS``)."""
    try:
        meta = loads_strict(header)
    except ValueError as error:
        raise PersonaGuardError(f"{path}: '{_METADATA_KEY}' metadata is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise PersonaGuardError(f"{path}: '{_METADATA_KEY}' metadata must be a JSON object")
    try:
        json.dumps(meta, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PersonaGuardError(f"{path}: '{_METADATA_KEY}' metadata holds undecodable text (a lone "
                                "surrogate such as \\ud800)") from None
    fields = {}
    for name, (types, default) in _HEADER_FIELDS.items():
        if name not in meta:
            if default is ...:
                raise PersonaGuardError(f"{path}: metadata field {name!r} is missing")
            fields[name] = default
            continue
        value = meta[name]
        if not isinstance(value, types) or isinstance(value, bool):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise PersonaGuardError(f"{path}: metadata field {name!r} must be {expected}, got {value!r:.60}")
        fields[name] = value
    version = fields["format_version"]
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise PersonaGuardError(f"{path}: format_version {fields['format_version']} is newer than "
                                f"this persona-guard understands ({FORMAT_VERSION})")
    return fields


def load_gguf_control_vector(path: str | Path) -> dict[int, torch.Tensor]:
    """Read a llama.cpp control vector back as ``{our layer index: direction [hidden]}``.

    Errors (one line naming ``path``): not a readable GGUF file, a ``direction.N`` name without an
    integer N, no direction at all, or a direction that is non-finite or all zero."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        tensors = [(tensor.name, torch.tensor(tensor.data.copy(), dtype=torch.float32)) for tensor in reader.tensors]
    except Exception as error:  # gguf raises ValueError, KeyError, struct and numpy errors on damaged files
        raise PersonaGuardError(f"{path}: not a readable GGUF control vector ({error})".splitlines()[0]) from None
    out = {}
    for name, direction in tensors:
        prefix, _, index = name.partition(".")
        if prefix != "direction":
            continue
        if not index.isdigit():
            raise PersonaGuardError(f"{path}: tensor {name!r} is not direction.<block index>")
        if not torch.isfinite(direction).all() or not direction.any():
            raise PersonaGuardError(f"{path}: {name} is non-finite or all zero")
        out[int(index) + 1] = direction
    if not out:
        raise PersonaGuardError(f"{path}: holds no direction.N tensor")
    return out


#: ``aggregator(positive [n, layers, d], negative [m, layers, d]) -> directions [layers, d]``
Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_difference(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean(pos) - mean(neg)`` over samples: ``[n, layers, d] x [m, layers, d] -> [layers, d]``
    (Chen et al. 2025, section 2: the persona vector)."""
    return pos.float().mean(0) - neg.float().mean(0)


def pca_of_differences(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of the paired differences ``pos[i] - neg[i]``, per layer.

    As ``steering_vectors.pca_aggregator`` (uncentered PCA of the differences and their negatives,
    i.e. the top right singular vector of the differences), signed so the mean difference projects
    positively; unlike it, scaled by the mean difference's projection on it, so the direction keeps
    the units (and steering coefficients) of :func:`mean_difference`. Needs ``n == m`` (pairs)."""
    if pos.shape != neg.shape:
        raise PersonaGuardError(f"pca_of_differences needs paired samples, got {pos.shape[0]} pos and "
                                f"{neg.shape[0]} neg")
    deltas = (pos.float() - neg.float()).transpose(0, 1)  # [layers, n, d]
    component = torch.linalg.svd(deltas, full_matrices=False).Vh[:, 0]  # [layers, d], unit rows
    along = (deltas.mean(1) * component).sum(-1, keepdim=True)  # mean difference on the component
    return component * along


AGGREGATORS: dict[str, Aggregator] = {"mean_difference": mean_difference, "pca_of_differences": pca_of_differences}


def compute_vector(positive_activations: torch.Tensor, negative_activations: torch.Tensor,
                   aggregator: Aggregator = mean_difference) -> torch.Tensor:
    """Per-layer trait directions ``[layers, d]`` from activations ``[n, layers, d]`` with the trait
    and ``[m, layers, d]`` without it, combined by ``aggregator`` (:data:`AGGREGATORS`). Pure: no
    model, no files. Errors: an empty side, mismatched shapes or a non-finite result."""
    pos, neg = positive_activations, negative_activations
    if pos.ndim != 3 or neg.ndim != 3 or pos.shape[1:] != neg.shape[1:]:
        raise PersonaGuardError(f"activations must be [samples, layers, hidden] on both sides, got "
                                f"{tuple(pos.shape)} and {tuple(neg.shape)}")
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise PersonaGuardError(f"need samples on both sides, got {pos.shape[0]} pos and {neg.shape[0]} neg")
    directions = aggregator(pos, neg)
    if not torch.isfinite(directions).all():
        raise PersonaGuardError("the activations give a non-finite direction (NaN or inf in the activations?)")
    return directions


def check_same_trait(vector: PersonaVector, trait: Trait) -> None:
    """Refuse judging or evaluating a vector against another trait's rubric (naming both)."""
    if trait.name != vector.trait:
        raise PersonaGuardError(f"the vector is for trait {vector.trait!r} but the trait given is {trait.name!r}; "
                                "pass the vector's own trait")


def vectors_by_trait(vectors, model: LoadedModel, user: str) -> dict[str, PersonaVector]:
    """Index vectors by trait, checking each fits ``model`` (see :meth:`PersonaVector.check_model`);
    ``user`` names the caller in errors."""
    if not vectors:
        raise PersonaGuardError(f"{user} needs at least one persona vector")
    names = [v.trait for v in vectors]
    if len(set(names)) != len(names):
        raise PersonaGuardError(f"{user}: two vectors share a trait name: {names}")
    for vector in vectors:
        vector.check_model(model)
    return {v.trait: v for v in vectors}
