import pytest
import torch

from persona_guard.activations import REDUCTIONS, StopForward, capture_activations, capture_hooks
from persona_guard.encoding import encode_conversation, encode_text
from persona_guard.errors import PersonaGuardError
from persona_guard.models import unwrap_model
from tests.conftest import as_loaded
from tests.samples import CONVERSATIONS


def reference(model, sample, layer, reduction):
    """The original code's way: one sample, full forward, output_hidden_states."""
    ids = torch.tensor([sample.input_ids])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
    p = sample.prompt_length
    return {"response_mean": hidden[p:].mean(0), "prompt_mean": hidden[:p].mean(0),
            "prompt_last": hidden[p - 1]}[reduction]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_capture_matches_output_hidden_states(tiny_model, tokenizer, padding_side):
    samples = [encode_conversation(tokenizer, c) for c in CONVERSATIONS]
    n_layers = unwrap_model(tiny_model).config.num_hidden_layers
    layers = [0, 1, 2, n_layers]
    got = capture_activations(as_loaded(tiny_model, tokenizer), samples, layers, REDUCTIONS,
                              batch_size=3, padding_side=padding_side, progress=False)
    for reduction in REDUCTIONS:
        assert got[reduction].shape == (len(samples), len(layers), 64)
        for i, sample in enumerate(samples):
            for slot, layer in enumerate(layers):
                want = reference(tiny_model, sample, layer, reduction)
                torch.testing.assert_close(got[reduction][i, slot], want, atol=1e-5, rtol=1e-5)


def test_forward_stops_after_deepest_layer(tiny_llama, tokenizer):
    calls = []
    blocks = tiny_llama.model.layers
    handles = [blocks[2].register_forward_hook(lambda *a: calls.append("block2")),
               tiny_llama.lm_head.register_forward_hook(lambda *a: calls.append("lm_head"))]
    samples = [encode_conversation(tokenizer, c) for c in CONVERSATIONS]
    capture_activations(as_loaded(tiny_llama, tokenizer), samples, [2], progress=False)
    assert calls == []  # layer 2 is block 1's output: block 2 and the head never ran
    capture_activations(as_loaded(tiny_llama, tokenizer), samples, [3], batch_size=8, progress=False)
    assert calls == ["block2"]  # the final norm is the last thing that ran
    for handle in handles:
        handle.remove()
    assert not any(b._forward_hooks for b in blocks)


def test_raw_text_and_errors(tiny_llama, tokenizer):
    text = encode_text(tokenizer, "The quick brown fox", " jumps over the lazy dog")
    assert text.prompt_length > 0 and text.response_length > 0
    out = capture_activations(as_loaded(tiny_llama, tokenizer), [text], [1], ("response_mean",), progress=False)
    torch.testing.assert_close(out["response_mean"][0, 0], reference(tiny_llama, text, 1, "response_mean"),
                               atol=1e-5, rtol=1e-5)
    prompt_only = encode_text(tokenizer, "no answer here")
    with pytest.raises(PersonaGuardError, match="sample 1 has no response tokens"):
        capture_activations(as_loaded(tiny_llama, tokenizer), [text, prompt_only], [1], ("response_mean",),
                            progress=False)
    with pytest.raises(PersonaGuardError, match="layer 9 out of range 0..3"):
        capture_activations(as_loaded(tiny_llama, tokenizer), [text], [9], progress=False)
    with pytest.raises(PersonaGuardError, match="unknown reduction"):
        capture_activations(as_loaded(tiny_llama, tokenizer), [text], [1], ("max",), progress=False)


def test_capture_hooks_without_early_stop_read_every_layer_and_leave_the_output_alone(tiny_model, tokenizer):
    """The server's mode: the forward runs to the logits, each hooked layer is read as
    output_hidden_states has it, and the hooks are gone after the block, even when it raises."""
    loaded = as_loaded(tiny_model, tokenizer)
    n = loaded.num_layers
    ids = torch.tensor([encode_conversation(tokenizer, CONVERSATIONS[0]).input_ids])
    with torch.no_grad():
        plain = tiny_model(input_ids=ids, output_hidden_states=True)
        before = hook_counts(loaded.layers)  # transformers records hidden_states with hooks of its own
        seen: dict[int, torch.Tensor] = {}
        with capture_hooks(loaded.layers, [n, 0, 1], lambda layer, hidden: seen.setdefault(layer, hidden),
                           stop_after_deepest=False):
            logits = tiny_model(input_ids=ids).logits
        torch.testing.assert_close(logits, plain.logits)
        assert sorted(seen) == [0, 1, n]
        for layer, hidden in seen.items():
            torch.testing.assert_close(hidden, plain.hidden_states[layer])
        with pytest.raises(StopForward), capture_hooks(loaded.layers, [1], lambda layer, hidden: None):
            tiny_model(input_ids=ids)
        with pytest.raises(PersonaGuardError, match=f"layer {n + 1} out of range"), \
                capture_hooks(loaded.layers, [1, n + 1], lambda layer, hidden: None):
            pass
    assert hook_counts(loaded.layers) == before


def hook_counts(layers) -> list[tuple[int, int]]:
    """(forward hooks, forward pre-hooks) of every block and the final norm (transformers adds its own)."""
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in [*layers.blocks, layers.norm]]
