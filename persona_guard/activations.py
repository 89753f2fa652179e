"""Batched capture of residual-stream activations, reduced per sample.

Layers follow the convention in :mod:`persona_guard.models` (``hidden_states[l]``). The forward pass is
cut short right after the deepest requested layer: later blocks and the LM head never run, which
is most of the saving over ``output_hidden_states=True`` when the vector's layer sits mid-model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from persona_guard.encoding import EncodedSample
from persona_guard.errors import PersonaGuardError
from persona_guard.models import DecoderLayers, LoadedModel, model_device

Reduction = Literal["response_mean", "prompt_mean", "prompt_last"]
REDUCTIONS: tuple[str, ...] = ("response_mean", "prompt_mean", "prompt_last")


class StopForward(Exception):
    """Raised by a reading hook to skip the rest of a forward pass (caught by whoever ran it)."""


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left padding does not shift rotary positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_batch(samples: Sequence[EncodedSample], pad_token_id: int, padding_side: str,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to the longest sample. Returns input_ids, attention_mask and, per row, the column where
    the sample's first real token sits (0 for right padding)."""
    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    offsets = torch.zeros(len(samples), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        start = width - n if padding_side == "left" else 0
        input_ids[row, start:start + n] = torch.tensor(sample.input_ids)
        attention_mask[row, start:start + n] = 1
        offsets[row] = start
    return input_ids.to(device), attention_mask.to(device), offsets.to(device)


def reduction_weights(samples: Sequence[EncodedSample], offsets: torch.Tensor, width: int,
                      reduction: str) -> torch.Tensor:
    """[batch, width] weights that turn hidden states into the reduction by a weighted sum."""
    columns = torch.arange(width, device=offsets.device)[None, :]
    prompt_len = torch.tensor([s.prompt_length for s in samples], device=offsets.device)[:, None]
    total_len = torch.tensor([len(s.input_ids) for s in samples], device=offsets.device)[:, None]
    start = offsets[:, None]
    if reduction == "response_mean":
        mask = (columns >= start + prompt_len) & (columns < start + total_len)
    elif reduction == "prompt_mean":
        mask = (columns >= start) & (columns < start + prompt_len)
    elif reduction == "prompt_last":
        mask = columns == start + prompt_len - 1
    else:
        raise PersonaGuardError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
    mask = mask.float()
    return mask / mask.sum(-1, keepdim=True)


def _check_samples(samples: Sequence[EncodedSample], reductions: Sequence[str]) -> None:
    for index, sample in enumerate(samples):
        if not sample.input_ids:
            raise PersonaGuardError(f"sample {index} is empty")
        if "response_mean" in reductions and sample.response_length == 0:
            raise PersonaGuardError(f"sample {index} has no response tokens (needed for response_mean)")
        if {"prompt_mean", "prompt_last"} & set(reductions) and sample.prompt_length == 0:
            raise PersonaGuardError(f"sample {index} has no prompt tokens (needed for prompt reductions)")


@contextlib.contextmanager
def capture_hooks(layers: DecoderLayers, indices: Sequence[int], on_hidden: Callable[[int, torch.Tensor], None],
                  *, stop_after_deepest: bool = True) -> Iterator[None]:
    """While inside, call ``on_hidden(layer, hidden [batch, seq, d])`` for each of ``indices``
    (``hidden_states`` indices, shallowest first) at every forward; hooks never change the output.
    ``stop_after_deepest`` raises :class:`StopForward` right after the deepest one, so later blocks
    and the LM head never run (catch it around the forward); without it the forward runs to the end
    (generation needs the logits). Errors: an index out of range."""
    deepest = max(layers.check(index) for index in indices)

    def reader(layer: int):
        def read(module: nn.Module, hidden: torch.Tensor) -> None:
            on_hidden(layer, hidden)
            if stop_after_deepest and layer == deepest:
                raise StopForward

        return read

    with layers.hooked({layer: reader(layer) for layer in set(indices)}):
        yield


@torch.no_grad()
def capture_activations(
    model: LoadedModel,
    samples: Sequence[EncodedSample],
    layers: Sequence[int],
    reductions: Sequence[str] = ("response_mean",),
    *,
    batch_size: int = 8,
    padding_side: str = "right",
    progress: bool = True,
    desc: str = "capturing activations",
) -> dict[str, torch.Tensor]:
    """Reduced hidden states for every sample: ``{reduction: float32 tensor [n_samples, len(layers), d]}``.

    Samples are batched in order of length (so padding stays small) and results are returned in
    input order. One forward pass serves all reductions and layers, hooked at ``model.layers`` (located
    once, with the model's ``layers_path``). Padding (``model.pad_token_id``) is masked out and never
    read, and positions count real tokens only, so left or right padding and a batch of one give the
    same numbers.
    """
    layers = list(layers)
    if not layers:
        raise PersonaGuardError("no layers requested")
    if padding_side not in ("left", "right"):
        raise PersonaGuardError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    _check_samples(samples, reductions)
    for reduction in reductions:
        if reduction not in REDUCTIONS:
            raise PersonaGuardError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
    if len(set(layers)) != len(layers):
        raise PersonaGuardError(f"duplicate layers in {layers}")
    device = model_device(model.model)
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].input_ids))
    layer_slot = {layer: slot for slot, layer in enumerate(layers)}
    results: dict[str, torch.Tensor] = {}
    batch_state: dict = {}

    def on_hidden(layer: int, hidden: torch.Tensor) -> None:
        for reduction, weights in batch_state["weights"].items():
            reduced = torch.einsum("bt,btd->bd", weights, hidden.float()).cpu()
            if reduction not in results:
                results[reduction] = torch.zeros(len(samples), len(layers), hidden.shape[-1])
            results[reduction][batch_state["indices"], layer_slot[layer]] = reduced

    network = model.model
    was_training = network.training
    network.eval()
    try:
        with capture_hooks(model.layers, layers, on_hidden), \
                tqdm(total=len(samples), desc=desc, disable=not progress, unit="sample") as bar:
            for begin in range(0, len(order), batch_size):
                indices = order[begin:begin + batch_size]
                batch = [samples[i] for i in indices]
                input_ids, attention_mask, offsets = pad_batch(batch, model.pad_token_id, padding_side, device)
                batch_state["indices"] = torch.tensor(indices)
                batch_state["weights"] = {r: reduction_weights(batch, offsets, input_ids.shape[1], r)
                                          for r in reductions}
                try:
                    network(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask), use_cache=False)
                except StopForward:
                    pass
                bar.update(len(batch))
    finally:
        network.train(was_training)
    return results
