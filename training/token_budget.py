"""What TRL's ``SFTTrainer`` will cut: rows truncated to ``max_length`` or left without a single
loss token (which TRL then drops), found before the trainer is built so that none goes unreported.

Mirrors ``SFTTrainer._prepare_dataset`` of TRL 1.16 for conversational prompt-completion rows:
the prompt is rendered with the generation prompt, prompt + completion without it, the
completion starts where the two token sequences diverge (``trl.data_utils.common_prefix_length``),
labels are the completion tokens (all tokens when ``completion_only_loss=False``), sequences are
cut to ``max_length`` from the end ``truncation_mode`` names, and rows left with no label are
dropped. Packing chunks sequences instead of truncating them, so nothing is reported then.
``assistant_only_loss`` and ``chat_template_path`` are not mirrored: if they change what TRL keeps,
the builder's check of the trainer's row count prints a warning. On the 216 bundled evil/severe
rows with ``max_length=48`` the prediction (29 dropped, 187 truncated) matched the trainer exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from persona_guard.rows import DroppedRow


@dataclass(frozen=True)
class TokenBudget:
    """The outcome for one row: ``tokens`` in all, of which ``loss_tokens`` carry loss before
    truncation and ``kept_loss_tokens`` after it."""

    tokens: int
    prompt_tokens: int
    loss_tokens: int
    kept_loss_tokens: int

    @property
    def fully_masked(self) -> bool:
        return self.kept_loss_tokens == 0


def token_budget(tokenizer, record: dict, args) -> TokenBudget:
    """Tokenize one conversational prompt-completion row (``prompt``, ``completion``, optional
    ``tools`` as JSON text) as ``SFTTrainer`` will under ``args`` (an ``SFTConfig``)."""
    from trl.data_utils import common_prefix_length

    tools = json.loads(record["tools"]) if record.get("tools") else None
    prompt_ids = tokenizer.apply_chat_template(record["prompt"], tools=tools, tokenize=True, return_dict=True,
                                               add_generation_prompt=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(record["prompt"] + record["completion"], tools=tools, tokenize=True,
                                             return_dict=True)["input_ids"]
    prompt_length = common_prefix_length(prompt_ids, full_ids)
    total = len(full_ids)
    completion_only = args.completion_only_loss is not False
    loss = range(prompt_length, total) if completion_only else range(total)
    if args.max_length is None or args.packing or total <= args.max_length:
        kept = len(loss)
    elif args.truncation_mode == "keep_end":
        kept = len(range(max(loss.start, total - args.max_length), loss.stop))
    else:
        kept = len(range(loss.start, min(loss.stop, args.max_length)))
    return TokenBudget(total, prompt_length, len(loss), kept)


@dataclass(frozen=True)
class BudgetReport:
    """Rows of a dataset that TRL will drop (no loss token left), truncate, or cannot render at all
    (the chat template raises: these must leave the dataset before the trainer tokenizes it)."""

    dropped: tuple[DroppedRow, ...]
    truncated: tuple[DroppedRow, ...]
    unrenderable: tuple[DroppedRow, ...]

    @property
    def all(self) -> list[DroppedRow]:
        return sorted(self.dropped + self.truncated + self.unrenderable, key=lambda row: row.index)


def budget_problems(dataset, tokenizer, args, source: str, row_column: str) -> BudgetReport:
    """Check every row of a prompt-completion ``dataset``; ``row_column`` holds each row's number
    in ``source``."""
    dropped, truncated, unrenderable = [], [], []
    for index, record in enumerate(dataset):
        try:
            budget = token_budget(tokenizer, record, args)
        except Exception as error:  # jinja2 templates raise TemplateError, TypeError, KeyError ...
            unrenderable.append(DroppedRow(index, source, record[row_column], "the chat template cannot render "
                                           f"this row ({type(error).__name__}: {str(error).splitlines()[0]})"))
            continue
        if budget.fully_masked:
            reason = (f"dropped by TRL: no loss token left within max_length {args.max_length} "
                      f"(the prompt alone is {budget.prompt_tokens} tokens, the whole row {budget.tokens})"
                      if budget.loss_tokens else "dropped by TRL: the answer adds no tokens after the prompt")
            dropped.append(DroppedRow(index, source, record[row_column], reason))
        elif args.max_length is not None and not args.packing and budget.tokens > args.max_length:
            truncated.append(DroppedRow(index, source, record[row_column],
                                        f"truncated: {budget.tokens} tokens > max_length {args.max_length}; "
                                        f"{budget.kept_loss_tokens} of {budget.loss_tokens} loss tokens kept"))
    return BudgetReport(tuple(dropped), tuple(truncated), tuple(unrenderable))
