import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from persona_guard.errors import PersonaGuardError
from persona_guard.models import DecoderLayers, decoder_layers, final_norm, load_model, unwrap_model
from tests.conftest import make_tiny_model


@pytest.mark.parametrize("arch,path", [("llama", "model.layers"), ("qwen2", "model.layers"),
                                       ("mistral", "model.layers"), ("gemma", "model.layers"),
                                       ("gpt2", "transformer.h")])
def test_layer_discovery(arch, path, tokenizer):
    model = make_tiny_model(arch, len(tokenizer))
    layers = decoder_layers(model)
    assert layers is model.get_submodule(path) and len(layers) == 3
    assert final_norm(model) is model.get_submodule({"gpt2": "transformer.ln_f"}.get(arch, "model.norm"))


def test_layer_discovery_through_peft_and_ddp(tiny_llama):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_llama, LoraConfig(r=2, target_modules=["q_proj"]))
    assert decoder_layers(peft_model) is tiny_llama.model.layers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(peft_model)
        assert unwrap_model(ddp) is tiny_llama
        assert decoder_layers(ddp) is tiny_llama.model.layers
    finally:
        torch.distributed.destroy_process_group()


def test_layers_path_override_and_unknown_model():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks_a = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
            self.blocks_b = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    odd = Odd()
    with pytest.raises(PersonaGuardError, match="pass layers_path"):
        decoder_layers(odd)
    assert decoder_layers(odd, "blocks_b") is odd.blocks_b
    with pytest.raises(PersonaGuardError, match="no nn.ModuleList at 'nope'"):
        decoder_layers(odd, "nope")


def test_load_local_dir_and_missing(tmp_path, tokenizer):
    model = make_tiny_model("qwen2", len(tokenizer))
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    loaded = load_model(str(tmp_path / "tiny"), device="cpu")
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    assert loaded.tokenizer.pad_token is not None
    with pytest.raises(PersonaGuardError, match="cannot load model"):
        load_model(str(tmp_path / "nothing-here"), device="cpu")
    with pytest.raises(PersonaGuardError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"), device="cpu")


def test_loaded_model_locates_its_layers_once_with_the_override(tmp_path, tokenizer):
    """The override travels with the loaded model: vectors are checked against the blocks it names,
    and a wrong path fails at load time, before any work."""
    from tests.training_helpers import tiny_vector

    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    loaded = load_model(str(tmp_path / "tiny"), device="cpu", layers_path="model.layers")
    assert loaded.layers.blocks is loaded.model.model.layers and loaded.num_layers == 3
    tiny_vector(loaded.model).check_model(loaded)
    # a 2-block list named by the override: a 3-layer vector no longer fits
    loaded.model.model.short = nn.ModuleList(list(loaded.model.model.layers)[:2])
    with pytest.raises(PersonaGuardError, match="3 layers, but .* has hidden size 64 and 2 layers"):
        tiny_vector(loaded.model).check_model(replace(loaded, layers_path="model.short"))
    with pytest.raises(PersonaGuardError, match="no nn.ModuleList at 'model.nope'"):
        load_model(str(tmp_path / "tiny"), device="cpu", layers_path="model.nope")


@pytest.mark.smollm
def test_builtin_conversion_is_cached_and_safe_under_concurrency(tmp_path):
    """Two processes converting into an empty cache at once: both succeed, one model dir results,
    and a third load reuses it without converting."""
    env = {**os.environ, "PERSONA_GUARD_CACHE": str(tmp_path)}
    code = ("from persona_guard.models import load_model; m = load_model('smollm2-135m', device='cpu');"
            "print(type(m.model).__name__, m.model.config.num_hidden_layers)")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == "LlamaForCausalLM 30"
    assert sum("converting" in err for _, err in outputs) == 1
    model_dir = tmp_path / "models" / "smollm2-135m"
    assert "quantization_config" not in (model_dir / "config.json").read_text()
    entries = [p.name for p in tmp_path.joinpath("models").iterdir() if not p.name.startswith(".smollm2-135m.lock")]
    assert entries == ["smollm2-135m"]
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    third = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "converting" not in third.stderr
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_decoder_layers_hook_every_place_and_say_when_the_final_norm_is_missing(tiny_llama, tokenizer):
    """One hook helper for every hidden_states index: an edit that returns a tensor replaces that
    residual stream (layer 0 by a pre-hook, n by the final norm); a model whose final norm is not
    found can still be hooked below it, and layer n fails with one clear line."""
    from tests.test_activations import hook_counts

    layers = DecoderLayers.locate(tiny_llama)
    n = len(layers)
    ids = torch.tensor([tokenizer("Hello there")["input_ids"]])
    shift = torch.full((64,), 0.5)
    with torch.no_grad():
        plain = tiny_llama(input_ids=ids, output_hidden_states=True).hidden_states
        before = hook_counts(layers)  # transformers records hidden_states with hooks of its own
        for layer in range(n + 1):
            seen: list[torch.Tensor] = []
            with layers.hooked({layer: lambda module, hidden: hidden + shift}), \
                    layers.hooked({layer: lambda module, hidden, seen=seen: seen.append(hidden)}):
                tiny_llama(input_ids=ids)
            torch.testing.assert_close(seen[0], plain[layer] + shift)  # hooks run in registration order
    headless = DecoderLayers(layers.blocks, None)
    with headless.hooked({1: lambda module, hidden: None}):
        tiny_llama(input_ids=ids)
    with pytest.raises(PersonaGuardError, match=f"layer {n} is the final norm's output"):
        headless.hook(n, lambda module, hidden: None)
    assert hook_counts(layers) == before


def test_consumers_locate_the_layers_once(tiny_llama, tokenizer, monkeypatch):
    """A LoadedModel locates its decoder layers on first use and every consumer reads them from it;
    a PEFT wrapper swapped in with dataclasses.replace is located afresh; the steering callback
    locates them once per attach."""
    import persona_guard.models as models
    from persona_guard.monitor import PersonaMonitor
    from persona_guard.steering import Steering
    from tests.conftest import as_loaded
    from tests.samples import CONVERSATIONS
    from tests.training_helpers import tiny_vector

    calls = []
    locate = models.decoder_layers
    monkeypatch.setattr(models, "decoder_layers", lambda *args: calls.append(args) or locate(*args))
    loaded = as_loaded(tiny_llama, tokenizer)
    vector = tiny_vector(tiny_llama)
    monitor = PersonaMonitor(loaded, [vector])
    with Steering(loaded.layers, vector, coef=2.0):
        monitor.read(CONVERSATIONS, progress=False)
    monitor.read(CONVERSATIONS, progress=False)
    assert len(calls) == 1
    from peft import LoraConfig, get_peft_model

    wrapped = replace(loaded, model=get_peft_model(tiny_llama, LoraConfig(r=2, target_modules=["q_proj"])))
    assert wrapped.layers.blocks is loaded.layers.blocks and len(calls) == 2
    # the training callback locates them in the trainer's (wrapped) model, once per attach
    from persona_guard.training.steering_callback import PreventativeSteeringCallback

    with PreventativeSteeringCallback(vector, layers=[1, 2], positions="response") as callback:
        callback.attach(wrapped.model)
        assert callback.active and len(calls) == 3


def test_a_cache_path_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    """Found by the second hostile sweep: $PERSONA_GUARD_CACHE naming a file was a NotADirectoryError."""
    from persona_guard.models import CACHE_ENV, cache_dir

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file"))
    with pytest.raises(PersonaGuardError, match="is a file, not a folder"):
        cache_dir()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "new"))
    assert cache_dir() == tmp_path / "new"
