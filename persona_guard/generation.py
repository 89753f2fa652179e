"""Batched, seeded chat generation with left padding (what ``generate`` needs for batches)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from persona_guard.encoding import Message, render_prompt
from persona_guard.models import model_device
from persona_guard.schema import bounds, check


@dataclass(frozen=True)
class GenerationConfig:
    """How answers are sampled (fields checked by :mod:`persona_guard.schema`; flags derive from them)."""

    max_new_tokens: int = field(default=96, metadata=bounds(ge=1, help="tokens generated per answer"))
    temperature: float = field(default=0.0, metadata=bounds(ge=0, help="sampling temperature; 0 = greedy"))
    top_p: float = field(default=1.0, metadata=bounds(gt=0, le=1, help="nucleus sampling mass"))
    batch_size: int = field(default=8, metadata=bounds(ge=1, help="prompts generated together"))
    seed: int = field(default=0, metadata=bounds(ge=0, help="sampling seed (each batch adds its offset)"))

    def __post_init__(self) -> None:
        check(self)


@torch.no_grad()
def generate_responses(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[Message]],
    config: GenerationConfig = GenerationConfig(),
    *,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Answer each chat prompt; returns the decoded response texts in input order.

    Prompts are batched by length and each batch is seeded with ``config.seed + batch start``, so
    the same prompts and config reproduce the same answers.
    """
    texts = [render_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    answers: list[str | None] = [None] * len(texts)
    device = model_device(model)
    was_training = model.training
    model.eval()
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with tqdm(total=len(texts), desc=desc, disable=not progress, unit="answer") as bar:
            for begin in range(0, len(order), config.batch_size):
                indices = order[begin:begin + config.batch_size]
                batch = tokenizer([texts[i] for i in indices], return_tensors="pt", padding=True,
                                  add_special_tokens=False).to(device)
                torch.manual_seed(config.seed + begin)
                sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p} \
                    if config.temperature > 0 else {"do_sample": False}
                output = model.generate(**batch, max_new_tokens=config.max_new_tokens,
                                        pad_token_id=tokenizer.pad_token_id, **sampling)
                new_tokens = output[:, batch["input_ids"].shape[1]:]
                for index, row in zip(indices, new_tokens):
                    answers[index] = tokenizer.decode(row, skip_special_tokens=True).strip()
                bar.update(len(indices))
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)
    return answers  # type: ignore[return-value]
