"""Shared fixtures: tiny random-weight models of real architectures, with SmolLM2's real tokenizer."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from persona_guard.models import DEFAULT_MODEL, ensure_builtin_converted  # noqa: E402

TINY_ARCHITECTURES = ("llama", "qwen2", "gpt2")


@pytest.fixture(scope="session")
def smollm_dir():
    """The embedded SmolLM2, converted once into the persona-guard cache."""
    return ensure_builtin_converted(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(smollm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(arch: str, vocab_size: int, layers: int = 3):
    from transformers import GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512, tie_word_embeddings=True)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512)
    if arch == "mistral":
        return MistralConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512)
    if arch == "gemma":
        return GemmaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, head_dim=16,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=layers, n_head=4, n_positions=512)
    raise ValueError(arch)


def make_tiny_model(arch: str, vocab_size: int, layers: int = 3, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size, layers), dtype=torch.float32)
    return model.eval()


@pytest.fixture(params=TINY_ARCHITECTURES)
def tiny_model(request, tokenizer):
    return make_tiny_model(request.param, len(tokenizer))


@pytest.fixture
def tiny_llama(tokenizer):
    return make_tiny_model("llama", len(tokenizer))


@pytest.fixture(scope="session")
def smollm(smollm_dir):
    from persona_guard.models import load_model

    return load_model(DEFAULT_MODEL, device="cpu")


def as_loaded(model, tokenizer, model_id: str = "tiny"):
    """A model built here, with its tokenizer, as the library's consumers take it (a ``LoadedModel``
    whose decoder layers are located on first use)."""
    from persona_guard.models import LoadedModel

    return LoadedModel(model, tokenizer, model_id)
