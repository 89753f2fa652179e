"""PreventativeSteeringCallback with a real TRL SFTTrainer on tiny random-weight models."""

from __future__ import annotations

import copy

import pytest
import torch

from persona_guard.models import decoder_layers
from persona_guard.training.steering_callback import (
    PreventativeSteeringCallback,
    SteeringSettings,
    incremental_directions,
    train_with_cleanup,
)
from tests.conftest import make_tiny_model
from tests.training_helpers import chat_dataset, layer_hook_count, lora_config, sft_trainer, tiny_vector


def first_loss(trainer) -> float:
    return next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_callback_changes_loss_and_trains_lora(tokenizer, tmp_path):
    plain_model = make_tiny_model("llama", len(tokenizer))
    steered_model = make_tiny_model("llama", len(tokenizer))
    vector = tiny_vector(plain_model, scale=3.0)
    callback = PreventativeSteeringCallback(vector, layers=2, coef=4.0)

    plain = sft_trainer(plain_model, tokenizer, tmp_path / "plain", peft_config=lora_config())
    steered = sft_trainer(steered_model, tokenizer, tmp_path / "steered", callbacks=[callback],
                          peft_config=lora_config())
    before = lora_weights(steered.model)
    plain.train()
    steered.train()

    # Same weights, same first batch: the first logged loss differs only through the hook.
    assert first_loss(plain) != pytest.approx(first_loss(steered), abs=1e-4)
    assert callback.steered_calls > 0
    after = lora_weights(steered.model)
    changed = [name for name in before if "lora_B" in name and not torch.equal(before[name], after[name])]
    assert changed, "LoRA B matrices start at zero; a non-zero gradient must move them"
    assert all(after[name].abs().sum() > 0 for name in changed)


def test_no_hook_after_training_and_generation_matches_hook_free_copy(tokenizer, tmp_path):
    model = make_tiny_model("qwen2", len(tokenizer))
    callback = PreventativeSteeringCallback(tiny_vector(model, scale=3.0), layers=[1, 2], coef=4.0)
    trainer = sft_trainer(model, tokenizer, tmp_path, callbacks=[callback], peft_config=lora_config())
    hooks_before = layer_hook_count(trainer.model)
    trainer.train()
    assert callback.steered_calls > 0
    assert not callback.active
    assert layer_hook_count(trainer.model) == hooks_before

    trained = trainer.model
    hook_free = copy.deepcopy(trained)
    for block in decoder_layers(hook_free):
        block._forward_hooks.clear()
    prompt = tokenizer("Tell me about the sea.", return_tensors="pt")
    for mode in ("train", "eval"):  # train mode would re-activate a leftover only-in-training hook
        trained.train(mode == "train")
        hook_free.train(mode == "train")
        with torch.no_grad():
            out = trained.generate(**prompt, max_new_tokens=8, do_sample=False)
            ref = hook_free.generate(**prompt, max_new_tokens=8, do_sample=False)
        assert torch.equal(out, ref)


class Boom(RuntimeError):
    pass


def test_exception_inside_train_leaves_no_hook(tokenizer, tmp_path):
    from transformers import TrainerCallback

    class Explode(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise Boom("failure in the middle of training")

    model = make_tiny_model("llama", len(tokenizer))
    callback = PreventativeSteeringCallback(tiny_vector(model), layers=2, coef=4.0)
    trainer = sft_trainer(model, tokenizer, tmp_path, callbacks=[callback, Explode()], max_steps=2)
    with pytest.raises(Boom):
        train_with_cleanup(trainer)
    assert callback.steered_calls > 0
    assert layer_hook_count(model) == 0

    # The context-manager form gives the same guarantee.
    trainer = sft_trainer(model, tokenizer, tmp_path, callbacks=[callback, Explode()], max_steps=2)
    with pytest.raises(Boom), callback:
        trainer.train()
    assert layer_hook_count(model) == 0


def test_hook_inactive_in_eval_mode_and_follows_dtype(tokenizer):
    model = make_tiny_model("gpt2", len(tokenizer)).to(torch.bfloat16)
    callback = PreventativeSteeringCallback(tiny_vector(model, scale=3.0), layers=2, coef=4.0)
    ids = tokenizer("A short test sentence.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(ids).logits
    callback.attach(model)
    try:
        with torch.no_grad():
            model.eval()
            assert torch.equal(model(ids).logits, reference)
            model.train()
            steered = model(ids).logits
        assert steered.dtype == torch.bfloat16
        assert not torch.allclose(steered.float(), reference.float())
    finally:
        callback.remove()
    assert layer_hook_count(model) == 0


def test_ablate_leaves_no_component_along_v(tokenizer):
    model = make_tiny_model("llama", len(tokenizer)).train()
    vector = tiny_vector(model)
    ids = tokenizer("Ablate the trait direction here.", return_tensors="pt")["input_ids"]
    seen = []
    # Registered after the steering hook, so it sees the steered block output.
    probe = decoder_layers(model)[1].register_forward_hook(
        lambda module, args, output: seen.append(output[0] if isinstance(output, tuple) else output))
    callback = PreventativeSteeringCallback(vector, layers=2, operator="ablate")
    try:
        with torch.no_grad():
            model(ids)
            callback.attach(model)
            decoder_layers(model)[1]._forward_hooks.move_to_end(probe.id)
            model(ids)
    finally:
        probe.remove()
        callback.remove()
    plain, ablated = (vector.project(hidden, 2).abs().max() for hidden in seen)
    assert plain > 1e-2
    assert ablated < 1e-5 * max(1.0, float(plain))
    assert ablated < plain / 1000


def batch_losses(trainer, model, batches) -> list[float]:
    model.train()
    with torch.no_grad():
        return [float(trainer.compute_loss(model, dict(batch))) for batch in batches]


def test_gradient_checkpointing_gives_same_update_as_plain(tokenizer, tmp_path):
    updates = {}
    for checkpointing in (False, True):
        model = make_tiny_model("llama", len(tokenizer))
        callback = PreventativeSteeringCallback(tiny_vector(model, scale=3.0), layers=[1, 2], coef=4.0)
        trainer = sft_trainer(model, tokenizer, tmp_path / str(checkpointing), callbacks=[callback],
                              peft_config=lora_config(), optim="sgd", learning_rate=1.0,
                              activation_checkpointing=checkpointing)
        before = lora_weights(trainer.model)
        trainer.train()
        updates[checkpointing] = {n: w - before[n] for n, w in lora_weights(trainer.model).items()}
        assert callback.steered_calls == 2  # transformers 5 checkpoints `forward`, hooks stay outside
    for name, update in updates[False].items():
        assert update.abs().sum() > 0 or "lora_A" in name
        assert torch.allclose(update, updates[True][name], atol=1e-6), name


class Checkpointed(torch.nn.Module):
    """Checkpoints the whole block call, hooks included (as FSDP's checkpoint_wrapper does), so the
    backward pass re-runs the steering hook."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        # Early stop would end the recomputation before the hook runs; without it the whole call
        # (hook included) is replayed in the backward pass.
        with torch.utils.checkpoint.set_checkpoint_early_stop(False):
            return torch.utils.checkpoint.checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def test_hook_recomputed_inside_checkpoint_gives_same_gradients(tokenizer):
    ids = tokenizer("Recompute me in the backward pass.", return_tensors="pt")["input_ids"]
    grads = {}
    for wrap in (False, True):
        model = make_tiny_model("llama", len(tokenizer)).train()
        callback = PreventativeSteeringCallback(tiny_vector(model, scale=3.0), layers=2, coef=4.0)
        callback.attach(model)
        if wrap:
            model.model.layers[1] = Checkpointed(model.model.layers[1])
        model(ids, labels=ids).loss.backward()
        callback.remove()
        assert callback.steered_calls == (2 if wrap else 1)
        grads[wrap] = model.model.layers[0].mlp.up_proj.weight.grad
    assert torch.allclose(grads[False], grads[True], atol=1e-7)


def test_packed_batches_get_the_same_steering_as_padded(tokenizer, tmp_path):
    dataset = chat_dataset(repeat=1).select(range(4))
    losses = {}
    for packing in (False, True):
        model = make_tiny_model("llama", len(tokenizer))
        vector = tiny_vector(model, scale=3.0)
        trainer = sft_trainer(model, tokenizer, tmp_path / str(packing), dataset=dataset, packing=packing,
                              per_device_train_batch_size=4, max_length=512)
        batches = list(trainer.get_train_dataloader())
        assert len(batches) == 1 and (batches[0]["input_ids"].shape[0] == 1) == packing
        plain = batch_losses(trainer, model, batches)[0]
        with PreventativeSteeringCallback(vector, layers=2, coef=4.0) as callback:
            callback.attach(model)
            steered = batch_losses(trainer, model, batches)[0]
        losses[packing] = (plain, steered)
    (plain_padded, steered_padded), (plain_packed, steered_packed) = losses[False], losses[True]
    assert steered_padded != pytest.approx(plain_padded, abs=1e-3)
    assert plain_packed == pytest.approx(plain_padded, abs=1e-4)
    assert steered_packed - plain_packed == pytest.approx(steered_padded - plain_padded, abs=1e-4)


def test_incremental_multi_layer_directions_accumulate_to_each_layer_vector(tokenizer):
    model = make_tiny_model("llama", len(tokenizer), layers=4)
    vector = tiny_vector(model)
    increments = incremental_directions(vector, [1, 2, 4])
    running = torch.zeros(vector.hidden_size)
    for layer in (1, 2, 4):
        running = running + increments[layer]
        assert torch.allclose(running, vector.direction(layer), atol=1e-6)


def test_linear_warmup_schedule_reaches_coef(tokenizer, tmp_path):
    settings = SteeringSettings(layers=2, coef=4.0, schedule="linear_warmup", warmup_steps=4)
    assert [settings.coefficient(step, 10) for step in range(6)] == [1.0, 2.0, 3.0, 4.0, 4.0, 4.0]
    assert SteeringSettings(coef=2.0).coefficient(7, 10) == 2.0
    assert SteeringSettings(coef=2.0, schedule="linear_warmup", warmup_ratio=0.5).coefficient(1, 8) == 1.0

    model = make_tiny_model("llama", len(tokenizer))
    callback = PreventativeSteeringCallback(tiny_vector(model), settings)
    assert callback.coef is None  # nothing applied before training
    seen = []

    from transformers import TrainerCallback

    class RecordCoef(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(callback.coef)

    trainer = sft_trainer(model, tokenizer, tmp_path, callbacks=[callback, RecordCoef()], max_steps=2,
                          per_device_train_batch_size=2)
    trainer.train()
    assert seen == [1.0, 2.0]
    assert callback.coef == 2.0  # the coefficient of the last step, kept after the hooks are gone


def test_steering_settings_refuse_bad_values_by_name():
    from persona_guard.errors import PersonaGuardError

    for options, message in [({"coef": float("nan")}, "coef: expected a finite number"),
                             ({"operator": "add_twice"}, "operator: expected one of 'add', 'ablate'"),
                             ({"warmup_ratio": 1.5}, "warmup_ratio: must be <= 1"),
                             ({"layers": -1}, "layers: must be >= 0"),
                             ({"layers": ()}, "layers: preventative steering needs at least one layer")]:
        with pytest.raises(PersonaGuardError, match=message):
            SteeringSettings(**options)


@pytest.mark.parametrize("packing", [False, True])
def test_response_positions_steer_exactly_the_tokens_with_loss(tokenizer, tmp_path, packing):
    model = make_tiny_model("llama", len(tokenizer))
    vector = tiny_vector(model, scale=3.0)
    trainer = sft_trainer(model, tokenizer, tmp_path, dataset=chat_dataset(repeat=1).select(range(4)),
                          packing=packing, max_length=512)
    batch = next(iter(trainer.get_train_dataloader()))
    outputs = []
    probe = decoder_layers(model)[1].register_forward_hook(
        lambda module, args, output: outputs.append(output[0] if isinstance(output, tuple) else output))
    try:
        batch_losses(trainer, model, [batch])
        with PreventativeSteeringCallback(vector, layers=2, coef=4.0, positions="response") as callback:
            callback.attach(model)
            decoder_layers(model)[1]._forward_hooks.move_to_end(probe.id)
            batch_losses(trainer, model, [batch])
    finally:
        probe.remove()
    added = outputs[1] - outputs[0]
    has_loss = batch["labels"] != -100
    assert 0 < int(has_loss.sum()) < has_loss.numel()
    steered = has_loss.clone()
    steered[:, :-1] |= has_loss[:, 1:]  # and the position that predicts the first answer token
    expected = 4.0 * vector.direction(2)
    assert torch.allclose(added[steered], expected.expand(int(steered.sum()), -1), atol=1e-4)
    assert added[~steered].abs().max() < 1e-5
    assert layer_hook_count(model) == 0
