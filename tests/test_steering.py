import pytest
import torch

from persona_guard.activations import capture_activations
from persona_guard.encoding import encode_conversation
from persona_guard.errors import PersonaGuardError
from persona_guard.models import DecoderLayers, decoder_layers
from persona_guard.steering import Steering
from tests.conftest import as_loaded
from tests.samples import CONVERSATIONS


def batch_of(tokenizer, conversation):
    sample = encode_conversation(tokenizer, conversation)
    ids = torch.tensor([sample.input_ids])
    return sample, ids


def no_hooks(model) -> bool:
    return not any(block._forward_hooks for block in decoder_layers(model))


def test_coef_zero_is_exact_noop(tiny_model, tokenizer):
    _, ids = batch_of(tokenizer, CONVERSATIONS[0])
    direction = torch.randn(64)
    with torch.no_grad():
        plain = tiny_model(input_ids=ids).logits
        with Steering(DecoderLayers.locate(tiny_model), direction, layers=[1, 2], coef=0.0):
            steered = tiny_model(input_ids=ids).logits
        with Steering(DecoderLayers.locate(tiny_model), direction, layers=[1, 2], coef=3.0):
            pushed = tiny_model(input_ids=ids).logits
    assert torch.equal(plain, steered)
    assert not torch.allclose(plain, pushed)
    assert no_hooks(tiny_model)


def test_add_shifts_hidden_state_by_coef_times_v(tiny_llama, tokenizer):
    sample, ids = batch_of(tokenizer, CONVERSATIONS[2])
    direction = torch.randn(64)
    plain = capture_activations(as_loaded(tiny_llama, tokenizer), [sample], [2], ("prompt_mean",),
                                progress=False)["prompt_mean"]
    with Steering(DecoderLayers.locate(tiny_llama), direction, layers=2, coef=2.5):
        steered = capture_activations(as_loaded(tiny_llama, tokenizer), [sample], [2], ("prompt_mean",),
                                      progress=False)["prompt_mean"]
    torch.testing.assert_close(steered - plain, (2.5 * direction).expand_as(plain), atol=1e-5, rtol=1e-5)


def test_ablate_leaves_no_component(tiny_model, tokenizer):
    samples = [encode_conversation(tokenizer, c) for c in CONVERSATIONS]
    before = capture_activations(as_loaded(tiny_model, tokenizer), samples, [2], ("response_mean", "prompt_last"),
                                 progress=False)
    direction = before["response_mean"][:, 0].mean(0)  # a direction the activations really have
    unit = direction / direction.norm()
    with Steering(DecoderLayers.locate(tiny_model), direction, layers=2, operator="ablate"):
        after = capture_activations(as_loaded(tiny_model, tokenizer), samples, [2], ("response_mean", "prompt_last"),
                                    progress=False)
    for reduction in ("response_mean", "prompt_last"):
        scale = before[reduction][:, 0].norm(dim=-1)
        assert ((before[reduction][:, 0] @ unit).abs() / scale).min() > 0.05
        assert ((after[reduction][:, 0] @ unit).abs() / scale).max() < 1e-5


def test_steering_changes_loss_and_gradients_reach_lora(tiny_llama, tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0))
    model.train()
    _, ids = batch_of(tokenizer, CONVERSATIONS[0])
    direction = torch.randn(64)
    plain_loss = model(input_ids=ids, labels=ids).loss
    with Steering(DecoderLayers.locate(model), direction, layers=1, coef=4.0):  # found through the PEFT wrapper
        steered_loss = model(input_ids=ids, labels=ids).loss
        steered_loss.backward()
    assert not torch.isclose(plain_loss, steered_loss)
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert no_hooks(model)


def test_hooks_removed_after_exception(tiny_llama):
    with pytest.raises(RuntimeError, match="boom"):
        with Steering(DecoderLayers.locate(tiny_llama), torch.randn(64), layers=[1, 3], coef=1.0):
            assert not no_hooks(tiny_llama)
            raise RuntimeError("boom")
    assert no_hooks(tiny_llama)


def test_only_in_training_is_inactive_in_eval_mode(tiny_llama, tokenizer):
    _, ids = batch_of(tokenizer, CONVERSATIONS[1])
    direction = torch.randn(64)
    with torch.no_grad():
        plain = tiny_llama(input_ids=ids).logits
        with Steering(DecoderLayers.locate(tiny_llama), direction, layers=2, coef=5.0, only_in_training=True):
            evaluated = tiny_llama(input_ids=ids).logits
            tiny_llama.train()
            trained = tiny_llama(input_ids=ids).logits
            tiny_llama.eval()
    assert torch.equal(plain, evaluated)
    assert not torch.allclose(plain, trained)


def test_response_positions_with_mask_leave_earlier_prompt_untouched(tiny_llama, tokenizer):
    sample, ids = batch_of(tokenizer, CONVERSATIONS[0])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, sample.prompt_length:] = True
    with torch.no_grad():
        plain = tiny_llama(input_ids=ids).logits
        with Steering(DecoderLayers.locate(tiny_llama), torch.randn(64), layers=1, coef=5.0,
                      positions="response") as steering:
            steering.set_response_mask(mask)
            steered = tiny_llama(input_ids=ids).logits
    p = sample.prompt_length
    # causal: the prompt never sees the response; its last position predicts the first answer token
    # and is steered with the response
    assert torch.equal(plain[:, :p - 1], steered[:, :p - 1])
    assert not torch.allclose(plain[:, p - 1:], steered[:, p - 1:])


def test_generate_response_positions_only_touch_new_tokens(tiny_llama, tokenizer):
    from persona_guard.generation import GenerationConfig, generate_responses

    prompts = [c[:-1] for c in CONVERSATIONS[:3]]
    config = GenerationConfig(max_new_tokens=6, batch_size=3)
    direction = torch.randn(64) * 20
    plain = generate_responses(tiny_llama, tokenizer, prompts, config, progress=False)
    captured = []
    handle = tiny_llama.model.layers[0].register_forward_hook(lambda m, a, o: captured.append(o.shape[1]))
    with Steering(DecoderLayers.locate(tiny_llama), direction, layers=1, coef=1.0, positions="response"):
        steered = generate_responses(tiny_llama, tokenizer, prompts, config, progress=False)
    handle.remove()
    assert captured[0] > 1 and set(captured[1:]) == {1}  # prefill, then one token per step
    assert plain != steered
    with Steering(DecoderLayers.locate(tiny_llama), direction, layers=1, coef=0.0, positions="response"):
        assert generate_responses(tiny_llama, tokenizer, prompts, config, progress=False) == plain


def test_invalid_arguments(tiny_llama):
    with pytest.raises(PersonaGuardError, match=r"layers are 0\.\.3 \(hidden_states index\)"):
        Steering(DecoderLayers.locate(tiny_llama), torch.randn(64), layers=4)
    with pytest.raises(PersonaGuardError, match="unknown operator"):
        Steering(DecoderLayers.locate(tiny_llama), torch.randn(64), layers=1, operator="mul")
    with pytest.raises(PersonaGuardError, match="needs explicit layers"):
        Steering(DecoderLayers.locate(tiny_llama), torch.randn(64))
