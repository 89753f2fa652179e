"""Turning conversations and raw text into token ids with a known, verified prompt/response boundary.

One rule for every chat template (README, "Layer convention", "Prompt/response boundary"):

1. The prompt is rendered with the tokenizer's chat template and the generation prompt: the text the
   model reads when it writes the answer.
2. The whole conversation (prompt + the assistant's answer) is rendered too, and so is the prompt
   with a sentinel answer, which shows the template's end-of-turn text (``<|im_end|>\\n``,
   ``<|eot_id|>``, ``</s>`` ...).
3. When the full render starts with the prompt render, the response is what the full render adds
   after the prompt, up to the end-of-turn text. That includes text some templates insert before
   the answer (Qwen3's empty ``<think>\\n\\n</think>\\n\\n``; the fallback format's space), which the
   model itself writes after the generation prompt, and the answer as the template renders it
   (Llama-3 and Gemma trim it; Qwen3 reformats a reasoning block).
4. When it does not (templates that rewrite earlier turns once an answer follows, e.g. Mistral-Nemo
   moves the system message into the *last* user turn), the prompt render is kept (what the model
   read when answering) and the answer as the full render shows it follows it; this is logged once.
5. Either way the answer's own text must be the end of the response region (compared without
   whitespace); otherwise :class:`ChatTemplateError` names the problem, and callers name the row.

Prompt and response are tokenized separately and concatenated, as the original persona-vectors code
did and as ``generate`` does (the answer's tokens follow the prompt's), so no token straddles the
boundary. Templates without a system role get the system text folded into the first user turn;
tokenizers without a chat template use :data:`FALLBACK_CHAT_TEMPLATE`. Both are logged once per
process.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jinja2 import TemplateError

from persona_guard.errors import PersonaGuardError

Message = Mapping[str, object]

log = logging.getLogger("persona_guard")

#: Plain-text format for tokenizers without a chat template (base models): ``Role: content``
#: turns separated by a blank line; the generation prompt is ``Assistant:`` and the model's answer
#: starts with the space after it. Tool calls of an assistant turn are written as JSON.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- message['role'] | capitalize + ': ' }}"
    "{%- if message['content'] %}{{- message['content'] }}"
    "{%- elif message['tool_calls'] is defined %}{{- message['tool_calls'] | tojson }}{%- endif %}"
    "{%- if not loop.last or add_generation_prompt %}{{- '\\n\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}"
)

#: Stand-in answer used to find where a template puts the assistant's content.
_SENTINEL = "PERSONAGUARDANSWERSLOT"

_logged: set[str] = set()
_system_support: dict[str, bool] = {}


class ChatTemplateError(PersonaGuardError):
    """The chat template cannot render a conversation, or its renders disagree on the answer."""


def _log_once(key: str, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.warning("persona-guard: %s", message)


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
        return turns[:-1], str(turns[-1].get("content") or "")
    return turns, None


def _template_name(tokenizer) -> str:
    return repr(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _chat_template(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    if not template:
        _log_once(f"fallback:{_template_name(tokenizer)}",
                  f"tokenizer {_template_name(tokenizer)} has no chat template; conversations are "
                  "rendered as 'User: ...' / 'Assistant: ...' turns (persona_guard.encoding."
                  "FALLBACK_CHAT_TEMPLATE)")
        return FALLBACK_CHAT_TEMPLATE
    return template


def _apply(tokenizer, template: str, messages: Sequence[Mapping], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except (TemplateError, TypeError, ValueError, KeyError) as error:  # raise_exception(), None content ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ChatTemplateError(f"the chat template of {_template_name(tokenizer)} rejects the "
                                f"conversation: {reason}") from None


def supports_system_role(tokenizer) -> bool:
    """Whether the chat template renders a system turn (Gemma-2's raises "System role not supported").

    Probed once per template with a sentinel system message, which must appear in the render.
    """
    template = _chat_template(tokenizer)
    if template not in _system_support:
        probe = [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "hi"}]
        try:
            _system_support[template] = _SENTINEL in _apply(tokenizer, template, probe, True)
        except ChatTemplateError:
            _system_support[template] = False
    return _system_support[template]


def chat_messages(tokenizer, messages: Sequence[Message]) -> list[dict]:
    """The messages as the template can take them: a null ``content`` (OpenAI-style assistant tool
    calls) becomes ``""``, which every template can concatenate; where the template has no system
    role, the system text is folded into the first user turn (``system + "\\n\\n" + user``,
    Gemma-3's own convention)."""
    turns = [{**m, "content": "" if m.get("content") is None else m["content"]} for m in messages]
    if not any(m.get("role") == "system" for m in turns) or supports_system_role(tokenizer):
        return turns
    _log_once(f"fold:{_template_name(tokenizer)}",
              f"the chat template of {_template_name(tokenizer)} has no system role; system text is "
              "folded into the first user turn")
    system = "\n\n".join(str(m.get("content") or "") for m in turns if m.get("role") == "system")
    rest = [m for m in turns if m.get("role") != "system"]
    first_user = next((i for i, m in enumerate(rest) if m.get("role") == "user"), None)
    if first_user is None:
        raise ChatTemplateError("a system message needs a user turn to fold into (the chat template "
                                f"of {_template_name(tokenizer)} has no system role)")
    rest[first_user] = {**rest[first_user], "content": f"{system}\n\n{rest[first_user].get('content') or ''}"}
    return rest


def render_prompt(tokenizer, prompt_messages: Sequence[Message]) -> str:
    """The chat-template text of a prompt, ending where the assistant's answer begins.

    Raises :class:`ChatTemplateError` (one line) if the template rejects the conversation.
    """
    return _apply(tokenizer, _chat_template(tokenizer), chat_messages(tokenizer, prompt_messages), True)


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def render_sample(tokenizer, prompt_messages: Sequence[Message], response: str) -> tuple[str, str]:
    """``(prompt_text, response_text)`` of a chat sample under the module's boundary rule.

    ``prompt_text + response_text`` is the text the model reads and writes; ``response_text`` is what
    the full render has after the prompt, up to the template's end-of-turn text. Raises
    :class:`ChatTemplateError` if the template does not render the answer where it says it does.
    """
    template = _chat_template(tokenizer)
    messages = chat_messages(tokenizer, prompt_messages)
    prompt_text = _apply(tokenizer, template, messages, True)
    probe = _apply(tokenizer, template, [*messages, {"role": "assistant", "content": _SENTINEL}], False)
    if probe.count(_SENTINEL) != 1:
        raise ChatTemplateError(f"the chat template of {_template_name(tokenizer)} does not render the "
                                "assistant's answer once; the prompt/response boundary cannot be found")
    before, end_of_turn = probe.split(_SENTINEL)
    full = _apply(tokenizer, template, [*messages, {"role": "assistant", "content": response}], False)
    if not full.endswith(end_of_turn):
        raise ChatTemplateError("the chat template ends this answer differently from its end-of-turn "
                                f"text {end_of_turn!r}; the prompt/response boundary cannot be verified")
    body = full[:len(full) - len(end_of_turn)]
    if body.startswith(prompt_text):
        answer = body[len(prompt_text):]
    elif body.startswith(before):
        _log_once(f"rewrite:{_template_name(tokenizer)}",
                  f"the chat template of {_template_name(tokenizer)} renders the prompt differently "
                  "once an answer follows; samples use the prompt as rendered for generation")
        answer = body[len(before):]
    else:
        raise ChatTemplateError("the chat template renders this conversation differently before the "
                                "answer than before a stand-in answer; the prompt/response boundary "
                                "cannot be verified")
    if not _squash(answer).endswith(_squash(response)):
        raise ChatTemplateError(f"the chat template renders the answer as {answer[:60]!r}, which does not "
                                "end with the answer's text; the prompt/response boundary cannot be verified")
    return prompt_text, answer


def encode_text(tokenizer, prompt: str, response: str | None = None) -> EncodedSample:
    """Encode raw text: ``prompt`` as-is (special tokens already in it are kept), then ``response``
    tokenized on its own (so the boundary is exact)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
    return EncodedSample(tuple(prompt_ids) + tuple(response_ids), len(prompt_ids))


def encode_chat(tokenizer, prompt_messages: Sequence[Message], response: str | None = None) -> EncodedSample:
    """Encode a chat prompt followed by an optional response, with the boundary rule of this module.

    An empty response encodes to zero response tokens; a whitespace-only one is tokenized as typed
    (templates trim it to nothing). Raises :class:`ChatTemplateError` (a :class:`PersonaGuardError`)
    when the boundary cannot be verified.
    """
    if not response:
        return encode_text(tokenizer, render_prompt(tokenizer, prompt_messages))
    if not response.strip():
        return encode_text(tokenizer, render_prompt(tokenizer, prompt_messages), response)
    return encode_text(tokenizer, *render_sample(tokenizer, prompt_messages, response))


def encode_conversation(tokenizer, messages: Sequence[Message]) -> EncodedSample:
    """Encode a whole conversation; a final assistant turn becomes the response."""
    prompt_messages, response = split_conversation(messages)
    return encode_chat(tokenizer, prompt_messages, response)
