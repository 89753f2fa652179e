"""Turning conversations and raw text into token ids with a known prompt/response boundary.

The prompt is rendered with the tokenizer's chat template (generation prompt included) and the
response is tokenized on its own and appended, as the original persona-vectors code did. Tokenizing
the two parts separately makes the boundary exact: no token can straddle it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from persona_guard.errors import PersonaGuardError

Message = Mapping[str, str]


@dataclass(frozen=True)
class EncodedSample:
    """Token ids of one sample; ``input_ids[:prompt_length]`` is the prompt, the rest the response."""

    input_ids: tuple[int, ...]
    prompt_length: int

    @property
    def response_length(self) -> int:
        return len(self.input_ids) - self.prompt_length


def split_conversation(messages: Sequence[Message]) -> tuple[list[dict], str | None]:
    """Split a conversation into (prompt messages, response): the last assistant turn, if it ends
    the conversation, is the response; everything before it is the prompt."""
    turns = [dict(m) for m in messages]
    if turns and turns[-1].get("role") == "assistant":
        return turns[:-1], turns[-1].get("content", "")
    return turns, None


def render_prompt(tokenizer, prompt_messages: Sequence[Message]) -> str:
    """The chat-template text of a prompt, ending where the assistant's answer begins."""
    if not getattr(tokenizer, "chat_template", None):
        raise PersonaGuardError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "pass raw text samples instead of conversations")
    return tokenizer.apply_chat_template(list(prompt_messages), add_generation_prompt=True, tokenize=False)


def encode_text(tokenizer, prompt: str, response: str | None = None) -> EncodedSample:
    """Encode raw text: ``prompt`` as-is (special tokens already in it are kept), then ``response``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
    return EncodedSample(tuple(prompt_ids) + tuple(response_ids), len(prompt_ids))


def encode_chat(tokenizer, prompt_messages: Sequence[Message], response: str | None = None) -> EncodedSample:
    """Encode a chat prompt (rendered with the chat template) followed by an optional response."""
    return encode_text(tokenizer, render_prompt(tokenizer, prompt_messages), response)


def encode_conversation(tokenizer, messages: Sequence[Message]) -> EncodedSample:
    """Encode a whole conversation; a final assistant turn becomes the response."""
    prompt_messages, response = split_conversation(messages)
    return encode_chat(tokenizer, prompt_messages, response)
