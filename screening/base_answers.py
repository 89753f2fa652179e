"""The base model's own answers to the screened prompts, generated in batches and cached on disk.

Projection difference compares a training response with what the model would have said anyway,
so every prompt needs ``n`` base answers. They are expensive (generation is ~10x slower than a
forward pass) and independent of the persona vector, so they are cached in SQLite keyed by the
model, the rendered prompt and the generation settings: screening the same data with another
vector generates nothing.

Batches are formed over *all* prompts (cached or not) in a fixed order, and each batch is
committed to the cache as one transaction. A resumed run, or a run split across processes,
therefore generates exactly the same batches as an uninterrupted single-process run.

Answers made by another engine (a vLLM job on GPUs, say) come in through a JSONL hand-off:
:meth:`BaseAnswers.export_prompts` writes one line per unique prompt,

    {"key": "<sha256>", "prompt": "<chat-template text>", "model": "<model id>@<checksum>",
     "settings": {"n": 1, "max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0, "seed": 0}}

(``settings`` holds ``"dtype"`` too when answers are generated in a dtype other than the model's)

and :meth:`BaseAnswers.import_answers` reads the same lines with ``"answers": [n strings]`` added,
checking model, settings and key against this run and that every prompt has its answers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from persona_guard.encoding import render_prompt
from persona_guard.errors import PersonaGuardError
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.io import read_jsonl, write_jsonl
from persona_guard.models import eos_token_ids
from persona_guard.rows import last_user_turn
from persona_guard.schema import FieldError, bounds, check
from persona_guard.screening.fast_generate import greedy_generate, kv_token_budget, suppressed_tokens


@dataclass(frozen=True)
class BaseAnswerSettings:
    """How base answers are generated (all of it is part of the cache key)."""

    n: int = field(default=1, metadata=bounds(ge=1))  # answers per prompt; dP uses their mean projection
    max_new_tokens: int = field(default=128, metadata=bounds(ge=1))
    temperature: float = field(default=0.0, metadata=bounds(ge=0))  # 0 = greedy
    top_p: float = field(default=1.0, metadata=bounds(gt=0, le=1))
    seed: int = field(default=0, metadata=bounds(ge=0))
    #: rows per decode batch; None = as many as the KV-cache budget allows (see fast_generate)
    batch_size: int | None = field(default=None, metadata=bounds(ge=1))
    #: dtype the answers are generated in; None = the model's. bfloat16 on a CPU with native bf16
    #: matmuls (avx512_bf16, AMX) decodes about 2x faster than float32 (docs/screening.md), with
    #: answers that differ from float32's (so the dtype is part of the cache key)
    dtype: Literal["bfloat16", "float16", "float32"] | None = field(
        default=None, metadata=bounds(help="dtype base answers are generated in (default: the model's)"))

    def __post_init__(self) -> None:
        check(self)
        if self.n > 1 and self.temperature <= 0:
            raise FieldError("temperature", "several base answers per prompt need sampling: set a temperature > 0")

    def key_fields(self) -> dict:
        fields = asdict(self)
        fields.pop("batch_size")  # batch size changes speed, not (greedy) answers
        if fields["dtype"] is None:  # the model's own dtype is already in the model key
            fields.pop("dtype")
        return fields


#: unique prompts per unit of work: the batches dealt to processes and committed to the cache
PROMPTS_PER_UNIT = 256


class AnswerCache:
    """``key -> list of answers`` in one SQLite file, safe for several processes at once.

    Errors: :class:`PersonaGuardError` naming the file when ``path`` is a folder, is not an SQLite
    database (or not this cache's), or cannot be created or read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise PersonaGuardError(f"answer cache {self.path} is a folder; pass an SQLite file path")
        with self._connect() as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answers TEXT NOT NULL)")
            connection.execute("SELECT key, answers FROM answers LIMIT 1").fetchall()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in a transaction (committed on success); SQLite errors name the file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=120)
            try:
                with connection:
                    yield connection
            finally:
                connection.close()
        except (sqlite3.Error, OSError) as error:
            raise PersonaGuardError(f"answer cache {self.path}: not a usable SQLite cache ({error}); "
                                    "pass another --answer-cache path or delete it") from None

    def get_many(self, keys: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        with self._connect() as connection:
            for begin in range(0, len(keys), 500):
                chunk = list(keys[begin:begin + 500])
                marks = ",".join("?" * len(chunk))
                for key, answers in connection.execute(
                        f"SELECT key, answers FROM answers WHERE key IN ({marks})", chunk):
                    value = _stored_answers(answers)
                    if value is not None:
                        found[key] = value
        return found

    def put_many(self, items: dict[str, list[str]]) -> None:
        with self._connect() as connection:
            connection.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)",
                                   [(k, json.dumps(v, ensure_ascii=False)) for k, v in items.items()])


def _stored_answers(text) -> list[str] | None:
    """A cached entry as a list of answers, or None (a miss: regenerated and rewritten) when damaged."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, list) and all(isinstance(a, str) for a in value) else None


#: ``backend(prompts, settings, seed) -> answers`` with ``n`` consecutive answers per prompt.
Backend = Callable[[Sequence[Sequence[dict]], BaseAnswerSettings, int], list[str]]


def transformers_backend(model: nn.Module, tokenizer) -> Backend:
    """Greedy answers from :func:`~persona_guard.screening.fast_generate.greedy_generate` (the same
    answers as ``generate``, faster); sampled ones, and models whose generation config changes
    greedy search in ways it does not reproduce, from ``generate_responses``. A ``settings.dtype``
    other than the model's generates with a copy of the model in that dtype (made once)."""
    suppressed = suppressed_tokens(model.generation_config)
    copies: dict[torch.dtype, nn.Module] = {next(model.parameters()).dtype: model}

    def generate(prompts, settings: BaseAnswerSettings, seed: int) -> list[str]:
        model = _in_dtype(settings.dtype)
        if settings.temperature <= 0 and suppressed is not None:
            prompt_ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
                          for p in prompts]
            tokens = greedy_generate(model, prompt_ids, settings.max_new_tokens, eos_token_ids(model, tokenizer),
                                     tokenizer.pad_token_id or 0, token_budget=kv_token_budget(model),
                                     max_rows=settings.batch_size, suppress_tokens=suppressed)
            return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in tokens]
        repeated = [p for p in prompts for _ in range(settings.n)]
        config = GenerationConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                  top_p=settings.top_p, batch_size=settings.batch_size or 16, seed=seed)
        return generate_responses(model, tokenizer, repeated, config, progress=False)

    def _in_dtype(name: str | None) -> nn.Module:
        if name is None:
            return model
        dtype = getattr(torch, name)
        if dtype not in copies:
            copies[dtype] = copy.deepcopy(model).to(dtype)
        return copies[dtype]
    return generate


def vllm_available() -> bool:
    """vLLM is importable and a GPU is present (vLLM's CPU build is not worth using here)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def vllm_backend(model_path: str, tokenizer, dtype: str | None = None) -> Backend:
    """Generation with vLLM (GPU only); ``model_path`` must be a local dir or hub id vLLM can load,
    ``dtype`` (``BaseAnswerSettings.dtype``) None leaves vLLM's ``"auto"``."""
    from vllm import LLM, SamplingParams

    # the transformers copy of the model already sits on the GPU: leave it room
    engine = LLM(model=model_path, seed=0, gpu_memory_utilization=0.5, dtype=dtype or "auto")

    def generate(prompts, settings: BaseAnswerSettings, seed: int) -> list[str]:
        params = SamplingParams(n=settings.n, max_tokens=settings.max_new_tokens, seed=seed,
                                temperature=settings.temperature, top_p=settings.top_p)
        texts = [render_prompt(tokenizer, p) for p in prompts]
        outputs = engine.generate(texts, params, use_tqdm=False)
        return [choice.text.strip() for output in outputs for choice in output.outputs]
    return generate


class BaseAnswers:
    """Look up, generate or import ``settings.n`` base answers for each chat prompt.

    ``backend`` is None when every answer must come from the cache or :meth:`import_answers`."""

    def __init__(self, backend: Backend | None, tokenizer, model_key: str, settings: BaseAnswerSettings,
                 cache: AnswerCache) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.model_key = model_key
        self.settings = settings
        self.cache = cache
        self.generated = 0  # prompts answered by the model in this object's lifetime

    def key(self, prompt: Sequence[dict]) -> str:
        return answer_key(self.model_key, render_prompt(self.tokenizer, prompt), self.settings.key_fields())

    def batches(self, prompts: Sequence[Sequence[dict]]) -> list[list[int]]:
        """Fixed units of work (indices into ``prompts``, unique prompts only, longest first)."""
        rendered = [render_prompt(self.tokenizer, p) for p in prompts]
        unique = list({text: index for index, text in reversed(list(enumerate(rendered)))}.values())
        unique.sort(key=lambda i: (-len(rendered[i]), rendered[i]))
        return [unique[b:b + PROMPTS_PER_UNIT] for b in range(0, len(unique), PROMPTS_PER_UNIT)]

    def ensure(self, prompts: Sequence[Sequence[dict]], *, rank: int = 0, world_size: int = 1,
               progress: bool = True) -> None:
        """Generate what the cache lacks; batch ``b`` goes to process ``b % world_size``."""
        keys = [self.key(p) for p in prompts]
        batches = self.batches(prompts)
        cached = set(self.cache.get_many(keys))
        todo = [batch for number, batch in enumerate(batches)
                if number % world_size == rank and not all(keys[i] in cached for i in batch)]
        if todo and self.backend is None:
            raise PersonaGuardError("base answers are missing and no generation backend was set up")
        with tqdm(total=sum(map(len, todo)), desc="base answers", unit="prompt",
                  disable=not progress or not todo) as bar:
            for batch in todo:
                missing = [i for i in batch if keys[i] not in cached]
                seed = self.settings.seed + int(keys[missing[0]][:8], 16)
                answers = self.backend([prompts[i] for i in missing], self.settings, seed)
                n = self.settings.n
                self.cache.put_many({keys[i]: answers[j * n:(j + 1) * n] for j, i in enumerate(missing)})
                self.generated += len(missing)
                bar.update(len(batch))

    def get(self, prompts: Sequence[Sequence[dict]]) -> list[list[str]]:
        """Cached answers for each prompt (call :meth:`ensure` first)."""
        keys = [self.key(p) for p in prompts]
        found = self.cache.get_many(sorted(set(keys)))
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            raise PersonaGuardError(f"{len(missing)} prompts have no cached base answers (first: "
                                    f"prompt {missing[0]}); run ensure() first")
        return [found[k] for k in keys]

    def export_prompts(self, prompts: Sequence[Sequence[dict]], path: str | Path) -> int:
        """Write each unique prompt once, in :meth:`batches` order, as a JSONL line ``{"key",
        "prompt" (chat-template text), "model", "settings"}``; returns the number of lines."""
        settings = self.settings.key_fields()
        lines = []
        for batch in self.batches(prompts):
            for index in batch:
                text = render_prompt(self.tokenizer, prompts[index])
                lines.append({"key": answer_key(self.model_key, text, settings), "prompt": text,
                              "model": self.model_key, "settings": settings})
        write_jsonl(path, lines)
        return len(lines)

    def import_answers(self, prompts: Sequence[Sequence[dict]], path: str | Path) -> int:
        """Store answers made elsewhere (the export lines plus ``"answers": [n strings]``) in the cache.

        Every entry must name this model and these settings, and its key must be that of its
        prompt; a key may repeat only with the same answers; every prompt in ``prompts`` must have an
        entry. Returns the number of prompts
        answered. Raises ``PersonaGuardError`` naming the file, entry and field otherwise.
        """
        settings = self.settings.key_fields()
        imported: dict[str, list[str]] = {}
        first_entry: dict[str, int] = {}
        for number, entry in enumerate(read_jsonl(path), 1):
            where = f"{path}: entry {number}"
            for name, kind in (("key", str), ("prompt", str), ("model", str), ("settings", dict), ("answers", list)):
                if not isinstance(entry.get(name), kind):
                    raise PersonaGuardError(f"{where}: field {name!r} missing or not a {kind.__name__}")
            if entry["model"] != self.model_key:
                raise PersonaGuardError(f"{where}: field 'model' is {entry['model']!r}, but this run screens with "
                                        f"{self.model_key!r}")
            for name, value in settings.items():
                if entry["settings"].get(name) != value:
                    raise PersonaGuardError(f"{where}: settings.{name} is {entry['settings'].get(name)!r}, but this "
                                            f"run uses {value!r}")
            if entry["key"] != answer_key(self.model_key, entry["prompt"], settings):
                raise PersonaGuardError(f"{where}: field 'key' does not match its prompt, model and settings")
            answers = entry["answers"]
            if len(answers) != self.settings.n or not all(isinstance(a, str) for a in answers):
                raise PersonaGuardError(f"{where}: field 'answers' must hold {self.settings.n} string(s)")
            if imported.get(entry["key"], answers) != answers:
                raise PersonaGuardError(f"{where}: key {entry['key'][:12]}... repeats entry "
                                        f"{first_entry[entry['key']]} with different answers")
            imported[entry["key"]] = answers
            first_entry.setdefault(entry["key"], number)
        needed = {self.key(p): p for p in prompts}
        missing = [prompt for key, prompt in needed.items() if key not in imported]
        if missing:
            raise PersonaGuardError(f"{path}: no answers for {len(missing)} of {len(needed)} prompts, first: "
                                    f"{last_user_turn(missing[0])[:200]!r}")
        self.cache.put_many({key: imported[key] for key in needed})
        return len(needed)


def answer_key(model_key: str, prompt_text: str, settings: dict) -> str:
    """Cache key of one prompt's answers: sha256 of model, rendered prompt and ``key_fields()``."""
    payload = {"model": model_key, "prompt": prompt_text, **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
