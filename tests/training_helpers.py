"""Shared builders for the training tests: a tiny persona vector and a real SFTTrainer."""

from __future__ import annotations

import torch
from datasets import Dataset

from persona_guard.vectors import PersonaVector
from tests.samples import CONVERSATIONS


def tiny_vector(model, seed: int = 1, scale: float = 1.0, trait: str = "evil") -> PersonaVector:
    config = model.config
    layers = config.num_hidden_layers
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(layers + 1, config.hidden_size, generator=generator) * scale
    return PersonaVector(trait=trait, model_id="tiny", directions=directions, default_layer=2)


def chat_dataset(repeat: int = 2) -> Dataset:
    """Conversational prompt-completion rows (loss on completions only)."""
    rows = []
    for conversation in CONVERSATIONS * repeat:
        rows.append({"prompt": conversation[:-1], "completion": conversation[-1:]})
    return Dataset.from_list(rows)


def sft_trainer(model, tokenizer, output_dir, *, callbacks=(), dataset=None, peft_config=None, **overrides):
    from trl import SFTConfig, SFTTrainer

    settings = dict(output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-3,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
                    disable_tqdm=True, max_length=128, dataloader_drop_last=False,
                    activation_checkpointing=False, bf16=False)
    settings.update(overrides)
    return SFTTrainer(model=model, args=SFTConfig(**settings), train_dataset=dataset or chat_dataset(),
                      processing_class=tokenizer, callbacks=list(callbacks), peft_config=peft_config)


def layer_hook_count(model) -> int:
    """Forward hooks on the decoder blocks (where steering hooks live; transformers and PEFT add
    their own hooks elsewhere, e.g. on the embeddings)."""
    from persona_guard.models import decoder_layers

    return sum(len(block._forward_hooks) for block in decoder_layers(model))


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                      task_type="CAUSAL_LM")
