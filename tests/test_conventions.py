"""The edges of the layer and position conventions, each exact against a slow reference or refused.

Layers: 0 (embedding output), a middle layer, n_layers (after the final norm). Positions: the first
answer token (predicted at the last prompt position), one-token and empty responses, batch of one,
left/right padding, KV-cache steps during generate. For capture, steering, monitoring and the
training callback.
"""

from __future__ import annotations

import pytest
import torch

from persona_guard.activations import capture_activations
from persona_guard.encoding import encode_chat, encode_conversation
from persona_guard.errors import PersonaGuardError
from persona_guard.models import DecoderLayers, decoder_layers, unwrap_model
from persona_guard.monitor import PersonaMonitor
from persona_guard.steering import Steering
from persona_guard.vectors import PersonaVector
from tests.conftest import as_loaded, make_tiny_model
from tests.samples import CONVERSATIONS


def n_layers(model) -> int:
    return len(decoder_layers(model))


def hidden_states(model, ids: torch.Tensor, **kwargs) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True, **kwargs).hidden_states


def prompt_ids(tokenizer, conversation) -> list[int]:
    return list(encode_chat(tokenizer, conversation[:-1]).input_ids)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_steering_adds_exactly_where_each_layer_is_captured(tiny_model, tokenizer, where):
    """Layer l's edit is exactly ``coef * v`` on ``hidden_states[l]`` (from an unsteered
    ``output_hidden_states`` forward), for l = 0 (input of the first block), a middle layer (output
    of block l - 1, read by a probe hook that runs after the steering hook: transformers records
    ``hidden_states`` of a block before other hooks on it run) and n_layers (output of the final
    norm, which is also what the LM head reads)."""
    n = n_layers(tiny_model)
    layer = {"first": 0, "middle": 1, "last": n}[where]
    ids = torch.tensor([encode_conversation(tokenizer, CONVERSATIONS[0]).input_ids])
    direction = torch.randn(64)
    plain = hidden_states(tiny_model, ids)
    seen = []
    with Steering(DecoderLayers.locate(tiny_model), direction, layers=layer, coef=3.0):
        probe = decoder_layers(tiny_model)[layer - 1].register_forward_hook(
            lambda module, args, output: seen.append(output[0] if isinstance(output, tuple) else output))
        try:
            steered = hidden_states(tiny_model, ids)
            with torch.no_grad():
                logits = tiny_model(input_ids=ids).logits
        finally:
            probe.remove()
    for l in range(layer):
        assert torch.equal(steered[l], plain[l])
    got = seen[0] if where == "middle" else steered[layer]
    torch.testing.assert_close(got - plain[layer], (3.0 * direction).expand_as(plain[layer]), atol=1e-4, rtol=1e-4)
    if layer < n:
        assert not torch.allclose(steered[layer + 1], plain[layer + 1])
    else:  # the LM head reads the steered final-norm output
        head = unwrap_model(tiny_model).get_output_embeddings()
        with torch.no_grad():
            torch.testing.assert_close(logits, head(plain[n] + 3.0 * direction), atol=1e-4, rtol=1e-4)


def test_steered_capture_at_layer_zero_and_last_layer(tiny_llama, tokenizer):
    samples = [encode_conversation(tokenizer, c) for c in CONVERSATIONS]
    layers = [0, n_layers(tiny_llama)]
    direction = torch.randn(64)
    plain = capture_activations(as_loaded(tiny_llama, tokenizer), samples, layers, ("response_mean", "prompt_last"),
                                progress=False)
    with Steering(DecoderLayers.locate(tiny_llama), {l: direction for l in layers}, coef=2.0):
        steered = capture_activations(as_loaded(tiny_llama, tokenizer), samples, layers, ("response_mean",
                                                                                          "prompt_last"),
                                      progress=False)
    for reduction in plain:
        torch.testing.assert_close(steered[reduction][:, 0] - plain[reduction][:, 0],
                                   (2.0 * direction).expand(len(samples), -1), atol=1e-4, rtol=1e-4)


def greedy_with_manual_steering(model, ids: list[int], layer: int, direction: torch.Tensor, coef: float,
                                positions: str, steps: int) -> list[int]:
    """Slow reference: one full forward per new token, no KV cache, a hand-written hook that adds
    ``coef * v`` where the rule says: positions >= the last prompt token are "response"."""
    prompt_length = len(ids)
    ids = list(ids)
    block = decoder_layers(model)[layer - 1]

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        response = torch.arange(hidden.shape[1]) >= prompt_length - 1
        keep = {"all": torch.ones_like(response), "response": response, "prompt": ~response}[positions]
        steered = hidden + coef * direction * keep[None, :, None].to(hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    handle = block.register_forward_hook(hook)
    try:
        for _ in range(steps):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
            ids.append(int(logits[0, -1].argmax()))
    finally:
        handle.remove()
    return ids[prompt_length:]


@pytest.mark.parametrize("positions", ["all", "response", "prompt"])
def test_generate_with_kv_cache_matches_a_manual_per_token_loop(tokenizer, positions):
    """Batched, left-padded generate with a KV cache steers the same positions as the rule applied
    to one full forward per token: the prefill's last position predicts the first answer token."""
    model = make_tiny_model("llama", len(tokenizer), seed=3)
    prompts = [prompt_ids(tokenizer, CONVERSATIONS[i]) for i in (0, 1)]
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))

    def generate():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)

    plain = generate()
    with Steering(DecoderLayers.locate(model), direction, layers=1, coef=20.0, positions=positions):
        output = generate()
    assert not torch.equal(output, plain)
    for row, prompt in enumerate(prompts):
        want = greedy_with_manual_steering(model, prompt, 1, direction, 20.0, positions, 5)
        assert output[row, width:].tolist() == want


def test_response_steering_changes_the_first_generated_token(tokenizer):
    model = make_tiny_model("llama", len(tokenizer))
    ids = torch.tensor([prompt_ids(tokenizer, CONVERSATIONS[1])])
    direction = torch.randn(64, generator=torch.Generator().manual_seed(0))

    def first_token() -> int:
        with torch.no_grad():
            return int(model.generate(input_ids=ids, max_new_tokens=1, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id)[0, -1])

    plain = first_token()
    with Steering(DecoderLayers.locate(model), direction, layers=2, coef=200.0, positions="response"):
        steered = first_token()
    assert steered != plain
    with Steering(DecoderLayers.locate(model), direction, layers=2, coef=0.0, positions="response"):
        assert first_token() == plain


@pytest.mark.smollm
def test_smollm_first_token_of_a_response_steered_answer_changes(smollm):
    tokenizer, model = smollm.tokenizer, smollm.model
    sample = encode_chat(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    ids = torch.tensor([sample.input_ids])
    probe = hidden_states(model, ids)[15][0, -1]
    direction = torch.randn(probe.shape[-1], generator=torch.Generator().manual_seed(0))
    direction = direction / direction.norm() * probe.norm()  # as large as the residual stream there

    def first_token() -> int:
        with torch.no_grad():
            return int(model.generate(input_ids=ids, max_new_tokens=1, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id)[0, -1])

    plain = first_token()
    with Steering(DecoderLayers.locate(model), direction, layers=15, coef=4.0, positions="response"):
        steered = first_token()
    assert steered != plain, tokenizer.decode([plain])


def test_prompt_and_response_positions_partition_all(tiny_llama, tokenizer):
    sample = encode_conversation(tokenizer, CONVERSATIONS[2])
    ids = torch.tensor([sample.input_ids])
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, sample.prompt_length:] = True
    direction = torch.randn(64)
    with torch.no_grad():
        plain = tiny_llama(input_ids=ids).logits
        with Steering(DecoderLayers.locate(tiny_llama), direction, layers=2, coef=2.0):
            everywhere = tiny_llama(input_ids=ids).logits
        with Steering(DecoderLayers.locate(tiny_llama), direction, layers=2, coef=2.0,
                      positions="prompt") as prompt_part, \
                Steering(DecoderLayers.locate(tiny_llama), direction, layers=2, coef=2.0,
                         positions="response") as response_part:
            prompt_part.set_response_mask(response)
            response_part.set_response_mask(response)
            both = tiny_llama(input_ids=ids).logits
    assert not torch.allclose(everywhere, plain)
    torch.testing.assert_close(both, everywhere, atol=1e-5, rtol=1e-5)


def test_capture_edges_one_token_empty_and_batch_of_one(tiny_model, tokenizer):
    prompt = [{"role": "user", "content": "Yes or no?"}]
    one = encode_chat(tokenizer, prompt, "Yes")
    assert one.response_length == 1
    n = n_layers(tiny_model)
    hidden = hidden_states(tiny_model, torch.tensor([one.input_ids]))
    got = capture_activations(as_loaded(tiny_model, tokenizer), [one], [0, n], ("response_mean", "prompt_last"),
                              batch_size=1,
                              progress=False)
    for slot, layer in enumerate((0, n)):
        torch.testing.assert_close(got["response_mean"][0, slot], hidden[layer][0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["prompt_last"][0, slot], hidden[layer][0, -2], atol=1e-5, rtol=1e-5)
    # the shortest sample inside a padded batch (left or right) == the same sample alone
    samples = [one, *(encode_conversation(tokenizer, c) for c in CONVERSATIONS)]
    for side in ("left", "right"):
        batched = capture_activations(as_loaded(tiny_model, tokenizer), samples, [0, n],
                                      ("response_mean", "prompt_last"), batch_size=6, padding_side=side,
                                      progress=False)
        for reduction in got:
            torch.testing.assert_close(batched[reduction][0], got[reduction][0], atol=1e-5, rtol=1e-5)
    empty = encode_chat(tokenizer, prompt, "")
    with pytest.raises(PersonaGuardError, match="sample 0 has no response tokens") as error:
        capture_activations(as_loaded(tiny_model, tokenizer), [empty], [1], ("response_mean",), progress=False)
    assert "\n" not in str(error.value)


def test_monitor_edges_against_output_hidden_states(tiny_llama, tokenizer):
    n = n_layers(tiny_llama)
    vector = PersonaVector("evil", "tiny", torch.randn(n + 1, 64), default_layer=n)
    conversations = [CONVERSATIONS[3],
                     [{"role": "user", "content": "Yes or no?"}, {"role": "assistant", "content": "No"}],
                     [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
                     [{"role": "user", "content": "Unanswered question"}]]
    readings = PersonaMonitor(as_loaded(tiny_llama, tokenizer), [vector], batch_size=3).read(conversations,
                                                                                             progress=False)
    for conversation, reading in zip(conversations, readings):
        sample = encode_conversation(tokenizer, conversation)
        hidden = hidden_states(tiny_llama, torch.tensor([sample.input_ids]))[n][0]
        trait = reading.traits["evil"]
        want_prompt = float(vector.project(hidden[sample.prompt_length - 1], n))
        assert trait.prompt_last == pytest.approx(want_prompt, abs=1e-4)
        if sample.response_length:
            want = float(vector.project(hidden[sample.prompt_length:].mean(0), n))
            assert trait.response_mean == pytest.approx(want, abs=1e-4)
        else:  # an empty or missing answer has no response reading
            assert trait.response_mean is None


def test_training_callback_steers_layer_zero_and_last_layer_in_training_only(tokenizer):
    from persona_guard.training.steering_callback import PreventativeSteeringCallback

    model = make_tiny_model("llama", len(tokenizer))
    n = n_layers(model)
    vector = PersonaVector("evil", "tiny", torch.randn(n + 1, 64), default_layer=1)
    ids = torch.tensor([encode_conversation(tokenizer, CONVERSATIONS[0]).input_ids])
    plain = hidden_states(model, ids)
    for layer in (0, n):
        with PreventativeSteeringCallback(vector, layers=layer, coef=2.0) as callback:
            callback.attach(model)
            model.train()
            steered = hidden_states(model, ids)
            model.eval()
            assert torch.equal(hidden_states(model, ids)[layer], plain[layer])  # eval sees the plain model
        torch.testing.assert_close(steered[layer] - plain[layer],
                                   (2.0 * vector.direction(layer)).expand_as(plain[layer]), atol=1e-4, rtol=1e-4)
        assert callback.steered_calls == 1
    with pytest.raises(PersonaGuardError, match=f"cannot include layer {n}: the final norm"):
        PreventativeSteeringCallback(vector, layers=[1, n], coef=2.0).attach(model)
