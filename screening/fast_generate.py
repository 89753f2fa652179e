"""Greedy decoding for base answers, faster than ``model.generate`` on CPU and GPU alike.

The same computation as transformers' greedy search (left padding, positions counted over real
tokens, logits of the last position only, argmax), with changes that only affect speed:

* **batches sized from memory, not fixed**: prompts are sorted longest first (so rows of a batch
  have similar lengths and little padding) and each batch takes as many rows as fit
  ``token_budget`` key/value positions (rows x (longest prompt + new tokens));
* **finished rows leave the batch**: a row that emitted an end-of-sequence token is dropped from
  the batch and its KV cache, instead of being decoded on as padding until the longest row ends;
* **a preallocated KV cache** (``PreallocatedCache``): keys and values are written in place into
  tensors sized for the whole answer, where transformers' ``DynamicCache`` concatenates, i.e.
  copies the whole cache of every layer, at every generated token;
* **a prompt prefix shared by every row is computed once** (the chat template's system prompt, a
  shared instruction): its keys and values come from one forward of one row and are copied to every
  row; each row's prefill then runs on the rest of its prompt only (``[prefix][padding][rest]`` in
  the cache, positions counted over real tokens, so attention sees the same sequence). Only for
  caches of full-attention layers (a sliding window would count the padding as distance).

Answers equal ``generate_responses`` greedy answers for the same prompts (a test checks it); what
changes with batch composition is only float rounding in the matmuls, as it already does with the
batch size of ``generate``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import psutil
import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from persona_guard.activations import position_ids_from_mask
from persona_guard.models import model_device

#: KV positions per batch on CPU: 256 rows of prompts up to 128 tokens with 128-token answers. Decode
#: matmuls run faster with more rows (on 2 idle cores, 256 real prompts x 128 new tokens: batches of
#: 92/95/69 rows at 64 x 256 gave 244 tokens/s in fp32 and 442 in bf16; one batch of 256 rows 323
#: and 557, benchmarks/base_answers.py --budgets); 256 x 256 positions is 3 GB of fp32 cache for SmolLM2
CPU_TOKEN_BUDGET = 256 * 256
#: share of free accelerator memory (of available RAM on CPU) the KV cache may take
MEMORY_SHARE = 0.5
#: shortest prompt prefix shared by every row of a batch that is computed once for the batch
MIN_SHARED_PREFIX = 8

#: generation-config fields that change greedy search, with their neutral values; of these the
#: loop below reproduces only ``suppress_tokens``
_GREEDY_RULES = {"repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
                 "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0),
                 "min_length": (None, 0), "min_new_tokens": (None, 0), "bad_words_ids": (None, []),
                 "begin_suppress_tokens": (None, []), "sequence_bias": (None, {}),
                 "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
                 "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0),
                 "watermarking_config": (None,)}


def suppressed_tokens(generation_config) -> tuple[int, ...] | None:
    """Token ids greedy search must never pick (``suppress_tokens``), or None when the generation
    config asks for any other logits rule (then only ``generate`` reproduces its answers)."""
    for name, neutral in _GREEDY_RULES.items():
        if getattr(generation_config, name, None) not in neutral:
            return None
    return tuple(generation_config.suppress_tokens or ())


def kv_bytes_per_position(model: nn.Module) -> int:
    """Bytes of keys and values one token position takes in the cache, over all layers."""
    config = model.config.get_text_config(decoder=True)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


def kv_token_budget(model: nn.Module) -> int:
    """KV positions per decode batch: half the free GPU memory, or on CPU the throughput knee
    ``CPU_TOKEN_BUDGET`` bounded by half the available RAM."""
    device = model_device(model)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free * MEMORY_SHARE) // kv_bytes_per_position(model))
    return max(1, min(CPU_TOKEN_BUDGET, int(psutil.virtual_memory().available * MEMORY_SHARE)
                      // kv_bytes_per_position(model)))


class _PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values are views into buffers sized for the whole answer:
    ``update`` writes the new positions in place instead of concatenating (copying) the cache."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            batch, heads, _, _ = key_states.shape
            self.key_buffer = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
            self.value_buffer = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
            self.device = key_states.device
            self.is_initialized = True
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            for name in ("key_buffer", "value_buffer"):
                old = getattr(self, name)
                new = old.new_empty((old.shape[0] * repeats, *old.shape[1:]))
                new[:, :, :self.length] = old[:, :, :self.length].repeat_interleave(repeats, dim=0)
                setattr(self, name, new)
            self.keys = self.key_buffer[:, :, :self.length]
            self.values = self.value_buffer[:, :, :self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer[indices]
            self.value_buffer = self.value_buffer[indices]
            self.keys = self.key_buffer[:, :, :self.length]
            self.values = self.value_buffer[:, :, :self.length]


class PreallocatedCache(DynamicCache):
    """KV cache of ``capacity`` positions per layer, filled in place (see :class:`_PreallocatedLayer`)."""

    def __init__(self, model: nn.Module, capacity: int) -> None:
        super().__init__(config=model.config)
        # sliding-window layers keep their own (bounded) cache
        self.layers = [_PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer
                       for layer in self.layers]

    @property
    def full_attention(self) -> bool:
        """Every layer attends to the whole sequence (no sliding window)."""
        return all(isinstance(layer, _PreallocatedLayer) for layer in self.layers)


def plan_batches(lengths: Sequence[int], max_new_tokens: int, token_budget: int,
                 max_rows: int | None = None) -> list[list[int]]:
    """Indices into ``lengths`` (prompt token counts), longest first, cut into batches of at most
    ``token_budget`` KV positions and ``max_rows`` rows each (at least one row per batch)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        if batches:
            batch = batches[-1]
            width = lengths[batch[0]] + max_new_tokens  # the first row is the longest
            if (len(batch) + 1) * width <= token_budget and (max_rows is None or len(batch) < max_rows):
                batch.append(index)
                continue
        batches.append([index])
    return batches


@torch.no_grad()
def greedy_generate(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    eos_token_ids: Iterable[int], pad_token_id: int, *, token_budget: int,
                    max_rows: int | None = None, suppress_tokens: Sequence[int] = ()) -> list[list[int]]:
    """Greedy continuation token ids of each prompt (token ids), in input order.

    Each continuation stops after its first token in ``eos_token_ids`` (kept) or at
    ``max_new_tokens``; ``suppress_tokens`` are never picked. ``token_budget`` bounds rows x
    (longest prompt + ``max_new_tokens``) per batch, i.e. the KV cache
    (:func:`kv_bytes_per_position` each: 46 KB for SmolLM2-135M in fp32); ``max_rows`` bounds rows.
    """
    outputs: list[list[int]] = [[] for _ in prompts]
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
    suppress = torch.tensor(sorted(set(suppress_tokens)), dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        for batch in plan_batches([len(p) for p in prompts], max_new_tokens, token_budget, max_rows):
            for index, tokens in zip(batch, _decode_batch(model, [prompts[i] for i in batch], max_new_tokens,
                                                         eos, suppress, pad_token_id)):
                outputs[index] = tokens
    finally:
        model.train(was_training)
    return outputs


def _decode_batch(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos: torch.Tensor,
                  suppress: torch.Tensor, pad_token_id: int) -> list[list[int]]:
    device = model_device(model)
    # the prefix every row shares, leaving each row at least one token of its own for the prefill
    shared = min(len(os.path.commonprefix([list(p) for p in prompts])), min(len(p) for p in prompts) - 1)
    cache = PreallocatedCache(model, max(len(p) for p in prompts) + max_new_tokens)
    if shared < MIN_SHARED_PREFIX or len(prompts) == 1 or not cache.full_attention:
        shared = 0
    rest = [p[shared:] for p in prompts]
    width = max(len(p) for p in rest)
    if shared:
        prefix = torch.tensor([list(prompts[0][:shared])], dtype=torch.long, device=device)
        # the decoder alone: the prefix needs keys and values, no logits
        model.base_model(input_ids=prefix, attention_mask=torch.ones_like(prefix),
                         position_ids=torch.arange(shared, device=device)[None], cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(prompts))
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
    attention_mask[:, :shared] = 1
    for row, prompt in enumerate(rest):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, shared + width - len(prompt):] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    eos, suppress = eos.to(device), suppress.to(device)
    position_ids = position_ids_from_mask(attention_mask)[:, shared:]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   cache=cache, use_cache=True, logits_to_keep=1).logits
    rows = torch.arange(len(prompts), device=device)  # which prompt each live batch row answers
    generated: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        scores = logits[:, -1].float()  # argmax over bf16 runs 4x slower on CPU than the cast and fp32 argmax
        scores[:, suppress] = -float("inf")
        next_tokens = scores.argmax(-1)
        for row, token in zip(rows.tolist(), next_tokens.tolist()):
            generated[row].append(token)
        if step == max_new_tokens - 1:
            break
        alive = ~torch.isin(next_tokens, eos)
        if not bool(alive.all()):
            if not bool(alive.any()):
                break
            keep = alive.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, next_tokens = rows[keep], next_tokens[keep]
            attention_mask, position_ids = attention_mask[keep], position_ids[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
        position_ids = position_ids[:, -1:] + 1
        logits = model(input_ids=next_tokens[:, None], attention_mask=attention_mask, position_ids=position_ids,
                       cache=cache, use_cache=True).logits
    return generated
