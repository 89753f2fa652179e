"""Projection-difference screening of fine-tuning data (Chen et al. 2025, section 6).

For a sample (prompt x, response y) and a persona vector at layer l::

    dP = proj(mean of h_l over y's tokens) - proj(mean of h_l over y''s tokens)

where y' is the base model's own answer to x. A high dP means the data pushes the model towards
the trait beyond what it would say anyway. ``fast`` mode replaces the base answer by the last
prompt token (``proj(response mean) - proj(last prompt token)``): no generation at all.

One forward pass per batch serves every vector: all needed layers are captured at once and the
pass stops at the deepest of them. Work is split in fixed shards that are checkpointed to disk;
under ``accelerate launch`` shard ``k`` goes to process ``k % num_processes`` and every process
reads the merged result back, so the output does not depend on the number of processes or on
interruptions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from persona_guard.activations import capture_activations
from persona_guard.encoding import ChatTemplateError, encode_chat
from persona_guard.errors import PersonaGuardError
from persona_guard.files import write_text_atomic
from persona_guard.judges import JudgeEndpoint
from persona_guard.models import LoadedModel, cache_dir, model_fingerprint, resolve_model_path
from persona_guard.projection import Projector
from persona_guard.rows import DroppedRow, RawRow, last_user_turn, read_rows, rows_from_records
from persona_guard.schema import FieldError, bounds, check, internal
from persona_guard.screening.base_answers import (
    AnswerCache,
    Backend,
    BaseAnswers,
    BaseAnswerSettings,
    transformers_backend,
    vllm_available,
    vllm_backend,
)
from persona_guard.screening.data import ScreenRow, classify_rows
from persona_guard.screening.policy import FlagPolicy, ranks, zscores
from persona_guard.vectors import PersonaVector, vectors_by_trait

Mode = Literal["exact", "fast"]


@dataclass
class ScreeningConfig:
    """How :class:`Screener` scores and flags rows; also a recipe's ``screening:`` section (checked by
    :mod:`persona_guard.schema`; fields marked internal are set by the caller, not by recipes)."""

    mode: Mode = "exact"
    #: per-trait layer overrides (default: each vector's default layer)
    layers: dict[str, int] = field(default_factory=dict)
    batch_size: int = field(default=8, metadata=bounds(ge=1))
    #: rows longer than this (prompt + response tokens) are skipped and reported
    max_length: int = field(default=2048, metadata=bounds(ge=1))
    shard_size: int = field(default=256, metadata=bounds(ge=1))
    base_answers: BaseAnswerSettings = field(default_factory=BaseAnswerSettings)
    #: SQLite file of cached base answers (default: <persona-guard cache>/base_answers.sqlite)
    answer_cache: str | None = None
    #: JSONL of base answers made elsewhere (see BaseAnswers.import_answers); nothing is generated
    base_answers_file: str | None = None
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    policy: FlagPolicy = field(default_factory=FlagPolicy)
    #: judge spec for ``persona_guard.judges.make_judge`` (e.g. "offline"); None = no judge
    judge: str | None = None
    judge_threshold: float = field(default=50.0, metadata=bounds(ge=0, le=100))
    judge_combine: Literal["and", "or"] = "and"
    judge_endpoint: JudgeEndpoint = field(default_factory=JudgeEndpoint)  # for openai:<model> judges
    #: where shards are checkpointed; required when running under several processes
    checkpoint_dir: str | None = field(default=None, metadata=internal())
    progress: bool = field(default=True, metadata=internal())

    def __post_init__(self) -> None:
        check(self)
        if self.policy.top_k == 0 and not (self.judge and self.judge_combine == "or"):
            raise FieldError("policy.top_k", "must be >= 1, got 0 (0 flags no row by dP: only for judge-only "
                                             "flagging, with a judge and judge_combine 'or')")

    @property
    def answer_cache_path(self) -> Path:
        """The base-answer cache file: ``answer_cache``, else ``<persona-guard cache>/base_answers.sqlite``."""
        return Path(self.answer_cache) if self.answer_cache else cache_dir() / "base_answers.sqlite"


@dataclass
class TraitScores:
    """Per-row arrays (aligned with ``ScreenResult.rows``) for one trait."""

    layer: int
    projection: np.ndarray  # response mean
    prompt_projection: np.ndarray  # last prompt token
    base_projection: np.ndarray | None  # mean over base answers (exact mode)
    dp: np.ndarray
    rank: np.ndarray
    zscore: np.ndarray
    flagged: np.ndarray
    threshold: float | None
    judge: np.ndarray | None = None  # judge trait score 0-100 (nan = no score)

    @property
    def fast_dp(self) -> np.ndarray:
        return self.projection - self.prompt_projection


@dataclass
class ScreenResult:
    mode: Mode
    rows: list[ScreenRow]
    skipped: list[DroppedRow]
    traits: dict[str, TraitScores]
    policy: FlagPolicy
    total_rows: int
    generated_prompts: int = 0
    reference: dict[str, np.ndarray] | None = None  # reference dP per trait, when calibrated

    @property
    def flagged(self) -> np.ndarray:
        flags = np.zeros(len(self.rows), dtype=bool)
        for scores in self.traits.values():
            flags |= scores.flagged
        return flags

    def columns(self, trait: str) -> dict[str, np.ndarray]:
        scores = self.traits[trait]
        columns = {f"{trait}_projection": scores.projection, f"{trait}_prompt_projection": scores.prompt_projection}
        if scores.base_projection is not None:
            columns[f"{trait}_base_projection"] = scores.base_projection
        columns.update({f"{trait}_dp": scores.dp, f"{trait}_rank": scores.rank,
                        f"{trait}_zscore": scores.zscore, f"{trait}_flagged": scores.flagged})
        if scores.judge is not None:
            columns[f"{trait}_judge"] = scores.judge
        return columns

    def records(self) -> list[dict]:
        """Each scored sample: its row's original fields (plus ``side`` for a preference row), the
        score columns of every trait and ``flagged``."""
        columns = {}
        for trait in self.traits:
            columns.update(self.columns(trait))
        flagged = self.flagged
        sided = any(row.side for row in self.rows)  # every record gets the column, as a table needs
        out = []
        for position, row in enumerate(self.rows):
            record = dict(row.data) | ({"side": row.side} if sided else {})
            for name, values in columns.items():
                record[name] = _plain(values[position])
            record["flagged"] = bool(flagged[position])
            out.append(record)
        return out

    def kept_rows(self) -> list[dict]:
        """The rows to train on, in their original form and input order: every row whose samples
        were all scored and none flagged, except that the rejected side of a preference row does
        not count (preference training moves the model away from it)."""
        flagged = self.flagged
        keep: dict[int, bool] = {}
        for position, row in enumerate(self.rows):
            keep[row.index] = keep.get(row.index, True) and (row.side == "rejected" or not flagged[position])
        for row in self.skipped:
            keep[row.index] = False
        data = {row.index: row.data for row in self.rows}
        return [data[index] for index in sorted(keep) if keep[index]]

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_list(self.records())


def _plain(value):
    """numpy scalar -> JSON-friendly Python value (nan -> None)."""
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    value = float(value)
    return None if np.isnan(value) else value


# ---- distribution (accelerate) -----------------------------------------------------------------

@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    state: object = None

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_processes() -> Processes:
    """This process's place in an ``accelerate launch`` / torchrun job (rank 0 of 1 otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    from accelerate import PartialState

    state = PartialState()
    return Processes(state.process_index, state.num_processes, state)


# ---- the screener ------------------------------------------------------------------------------

class Screener:
    """Score a dataset against one or more persona vectors.

    ``Screener(loaded, vectors, config).screen(dataset)`` (``loaded``: a
    :class:`~persona_guard.models.LoadedModel`) returns a ``datasets.Dataset``
    with the original fields plus, per trait, ``<trait>_projection``, ``<trait>_base_projection``
    (exact mode), ``<trait>_prompt_projection``, ``<trait>_dp``, ``<trait>_rank``,
    ``<trait>_zscore``, ``<trait>_flagged`` and an overall ``flagged``.
    """

    def __init__(self, loaded: LoadedModel, vectors: Sequence[PersonaVector],
                 config: ScreeningConfig | None = None, *,
                 on_shard_done: Callable[[int], None] | None = None) -> None:
        self.config = config or ScreeningConfig()
        self.vectors = vectors_by_trait(vectors, loaded, "screening")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.projector = Projector.of(self.vectors, self.config.layers)
        self.layers = self.projector.layers
        self.model_id = loaded.model_id
        self.model_key = model_fingerprint(self.model, self.model_id)
        self.on_shard_done = on_shard_done
        self._answers: BaseAnswers | None = None

    # -- base answers --

    @property
    def answers(self) -> BaseAnswers:
        if self._answers is None:
            self._answers = (self._answer_store(None, "external") if self.config.base_answers_file
                             else self._answer_store(*self._backend()))
        return self._answers

    def _answer_store(self, backend: Backend | None, backend_name: str) -> BaseAnswers:
        """The cache of base answers; the backend is part of the key (vLLM and transformers do not give
        identical answers), answers made elsewhere (``base_answers_file``) are keyed as ``external``."""
        return BaseAnswers(backend, self.tokenizer, f"{self.model_key}|{backend_name}", self.config.base_answers,
                           AnswerCache(self.config.answer_cache_path))

    def _backend(self) -> tuple[Backend, str]:
        backend_name = self.config.backend
        if backend_name == "auto":
            # vLLM runs its own engine: use it for single-process GPU runs only
            single = int(os.environ.get("WORLD_SIZE", "1")) == 1
            backend_name = "vllm" if single and vllm_available() else "transformers"
        if backend_name == "vllm":
            if not vllm_available():
                raise PersonaGuardError("the vllm backend needs vLLM installed and a GPU")
            return vllm_backend(resolve_model_path(self.model_id), self.tokenizer,
                                self.config.base_answers.dtype), "vllm"
        return transformers_backend(self.model, self.tokenizer), "transformers"

    def export_prompts(self, dataset, path: str | Path, reference=None) -> int:
        """Write the unique prompts of ``dataset`` (and ``reference``) that exact mode needs base
        answers for, with their cache keys (format: :meth:`BaseAnswers.export_prompts`); returns
        how many. Answer them elsewhere and pass the file as ``base_answers_file``."""
        prompts = [row.prompt for data in (dataset, reference) if data is not None
                   for row in classify_rows(_raw_rows(data))[0]]
        return self._answer_store(None, "external").export_prompts(prompts, path)

    # -- public API --

    def screen(self, dataset, reference=None):
        """Score ``dataset`` (a ``datasets.Dataset``, a list of dicts or a file path) and return a
        ``datasets.Dataset`` of the usable rows with score columns (see :meth:`score` for the
        full result including skipped rows)."""
        return self.score(dataset, reference=reference).to_dataset()

    def score(self, dataset, reference=None) -> ScreenResult:
        raw = _raw_rows(dataset)
        rows, skipped = classify_rows(raw)
        processes = current_processes()
        checkpoint = Path(self.config.checkpoint_dir) if self.config.checkpoint_dir else None
        if processes.world_size > 1 and checkpoint is None:
            raise PersonaGuardError("several processes need a checkpoint_dir to merge their shards")
        records = self._score_rows(rows, checkpoint, processes)
        reference_dp = None
        if reference is not None:
            reference_rows, _ = classify_rows(_raw_rows(reference))
            if not reference_rows:
                raise PersonaGuardError("the reference set has no usable rows")
            reference_records = self._score_rows(
                reference_rows, checkpoint / "reference" if checkpoint else None, processes)
            reference_dp = {trait: self._dp_array([r for r in reference_records if "skipped" not in r], trait)
                            for trait in self.vectors}
        return self._assemble(len(raw), rows, skipped, records, reference_dp, processes)

    # -- scoring --

    def _fingerprint(self, rows: Sequence[ScreenRow]) -> dict:
        content = hashlib.sha256()
        for row in rows:
            content.update(json.dumps([row.sample, row.prompt, row.response], sort_keys=True).encode())
        vectors = {t: {"layer": self.layers[t], "sha256": hashlib.sha256(
            v.directions.numpy().tobytes()).hexdigest()[:16]} for t, v in self.vectors.items()}
        return {"model": self.model_key, "vectors": vectors, "mode": self.config.mode,
                "base_answers": asdict(self.config.base_answers), "batch_size": self.config.batch_size,
                "max_length": self.config.max_length, "shard_size": self.config.shard_size,
                "rows": len(rows), "content_sha256": content.hexdigest(),
                # what turns scores into the finished outputs: a rerun with other flags is another run
                "policy": self.config.policy.name, "judge": self.config.judge,
                "judge_threshold": self.config.judge_threshold, "judge_combine": self.config.judge_combine}

    def _score_rows(self, rows: list[ScreenRow], checkpoint: Path | None, processes: Processes) -> list[dict]:
        size = self.config.shard_size
        shards = [rows[begin:begin + size] for begin in range(0, len(rows), size)]
        fingerprint = self._fingerprint(rows)
        if checkpoint is not None:  # shards of another run are refused before any work
            self._check_manifest(checkpoint, fingerprint, processes)
        if self.config.mode == "exact" and rows:
            if self.config.base_answers_file:  # every process checks and stores the same answers
                self.answers.import_answers([row.prompt for row in rows], self.config.base_answers_file)
            self.answers.ensure([row.prompt for row in rows], rank=processes.rank,
                                world_size=processes.world_size, progress=self.config.progress)
            processes.barrier()
        if checkpoint is not None and processes.is_main and not (checkpoint / "manifest.json").exists():
            # written once the base answers are in: a run refused before that leaves no folder
            write_text_atomic(checkpoint / "manifest.json", json.dumps(fingerprint, indent=2))
        mine = [k for k in range(len(shards)) if k % processes.world_size == processes.rank]
        records: dict[int, list[dict]] = {}
        with tqdm(total=sum(len(shards[k]) for k in mine), desc="screening", unit="row",
                  disable=not self.config.progress) as bar:
            for k in mine:
                path = checkpoint / f"shard-{k:05d}.jsonl" if checkpoint else None
                if path is None or self._read_shard(path, shards[k]) is None:
                    records[k] = self._score_shard(shards[k])
                    if path is not None:
                        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records[k]))
                    if self.on_shard_done is not None:
                        self.on_shard_done(k)
                bar.update(len(shards[k]))
        processes.barrier()
        merged = []
        for k in range(len(shards)):
            if checkpoint is not None:  # everyone reads the files: identical merged output
                path = checkpoint / f"shard-{k:05d}.jsonl"
                stored = self._read_shard(path, shards[k])
                if stored is None:
                    raise PersonaGuardError(f"{path}: shard damaged while screening; rerun with --force")
                merged.extend(stored)
            else:
                merged.extend(records[k])
        return merged

    def _read_shard(self, path: Path, shard: Sequence[ScreenRow]) -> list[dict] | None:
        """A checkpointed shard's records, or None when missing or damaged (not UTF-8 JSON lines, or
        not one record per sample of ``shard`` with this run's traits): it is then scored again."""
        try:
            records = [json.loads(line) for line in path.read_bytes().decode("utf-8").splitlines()]
        except (OSError, ValueError):
            return None
        intact = len(records) == len(shard) and all(
            isinstance(r, dict) and r.get("index") == row.sample
            and ("skipped" in r or isinstance(r.get("traits"), dict) and set(r["traits"]) == set(self.vectors))
            for r, row in zip(records, shard))
        return records if intact else None

    def _check_manifest(self, checkpoint: Path, fingerprint: dict, processes: Processes) -> None:
        manifest = checkpoint / "manifest.json"
        if processes.is_main:
            if manifest.exists():
                try:
                    recorded = json.loads(manifest.read_bytes().decode("utf-8"))
                except (OSError, ValueError):
                    raise PersonaGuardError(f"{manifest} is damaged, so its shards cannot be trusted; "
                                            "use another output dir or --force") from None
                differ = _differences(recorded, fingerprint) if isinstance(recorded, dict) else ["all inputs"]
                if differ:
                    raise PersonaGuardError(
                        f"{checkpoint} holds shards of another screening run ({'; '.join(differ)}); "
                        "use another output dir or --force")
        processes.barrier()

    def _score_shard(self, shard: Sequence[ScreenRow]) -> list[dict]:
        """Projections of one shard's samples: ``{"index", "traits": {...}}`` or ``{"index", "skipped"}``
        (``index``: the sample's :attr:`ScreenRow.sample`)."""
        tokenizer, max_length = self.tokenizer, self.config.max_length
        results: dict[int, dict] = {}
        samples, owners = [], []
        for row in shard:
            try:
                sample = encode_chat(tokenizer, list(row.prompt), row.response)
            except ChatTemplateError as error:
                results[row.index] = {"index": row.index, "skipped": str(error)}
                continue
            if len(sample.input_ids) > max_length:
                results[row.sample] = {"index": row.sample, "skipped": f"too long: {len(sample.input_ids)} "
                                      f"tokens > max length {max_length}"}
            elif sample.response_length == 0:
                results[row.sample] = {"index": row.sample, "skipped": "response has no tokens"}
            else:
                samples.append(sample)
                owners.append(row)
        base_slots: list[list[int]] = [[] for _ in owners]
        if self.config.mode == "exact" and owners:
            for position, (row, answers) in enumerate(zip(owners, self.answers.get([r.prompt for r in owners]))):
                for answer in answers:
                    base = encode_chat(tokenizer, list(row.prompt), answer) if answer else None
                    if base is not None and base.response_length > 0:
                        base_slots[position].append(len(samples))
                        samples.append(base)
        if not samples:
            return [results[row.sample] for row in shard]
        activations = capture_activations(
            self.loaded, samples, self.projector.capture_layers, ("response_mean", "prompt_last"),
            batch_size=self.config.batch_size, progress=False)
        responses = self.projector.project(activations["response_mean"])
        prompts = self.projector.project(activations["prompt_last"])
        projections = {trait: (responses[trait].tolist(), prompts[trait].tolist()) for trait in self.vectors}
        for position, row in enumerate(owners):
            if self.config.mode == "exact" and not base_slots[position]:
                results[row.sample] = {"index": row.sample, "skipped": "the base model's answers are empty"}
                continue
            traits = {}
            for trait, (response, prompt_last) in projections.items():
                entry = {"projection": response[position], "prompt_projection": prompt_last[position]}
                if self.config.mode == "exact":
                    slots = base_slots[position]
                    entry["base_projection"] = sum(response[s] for s in slots) / len(slots)
                traits[trait] = entry
            results[row.sample] = {"index": row.sample, "traits": traits}
        return [results[row.sample] for row in shard]

    def _dp_array(self, records: Sequence[dict], trait: str) -> np.ndarray:
        subtract = "base_projection" if self.config.mode == "exact" else "prompt_projection"
        return np.array([r["traits"][trait]["projection"] - r["traits"][trait][subtract] for r in records])

    # -- assembling --

    def _assemble(self, total: int, rows: list[ScreenRow], skipped: list[DroppedRow], records: list[dict],
                  reference_dp: dict[str, np.ndarray] | None, processes: Processes) -> ScreenResult:
        by_sample = {row.sample: row for row in rows}
        scored_rows, scored = [], []
        for record in records:
            row = by_sample[record["index"]]
            if "skipped" in record:
                skipped.append(DroppedRow(row.index, row.source, row.row_number, record["skipped"], row.side))
            else:
                scored_rows.append(row)
                scored.append(record)
        skipped.sort(key=lambda s: s.index)
        traits = {}
        policy = self.config.policy
        for trait in self.vectors:
            values = {key: np.array([r["traits"][trait][key] for r in scored], dtype=np.float64)
                      for key in ("projection", "prompt_projection")}
            base = np.array([r["traits"][trait]["base_projection"] for r in scored], dtype=np.float64) \
                if self.config.mode == "exact" else None
            dp = self._dp_array(scored, trait)
            flagged, threshold = policy.flags(dp, None if reference_dp is None else reference_dp[trait])
            traits[trait] = TraitScores(self.layers[trait], values["projection"], values["prompt_projection"],
                                        base, dp, ranks(dp), zscores(dp) if len(dp) else dp, flagged, threshold)
        result = ScreenResult(self.config.mode, scored_rows, skipped, traits, policy, total,
                              self._answers.generated if self._answers else 0, reference_dp)
        if self.config.judge and processes.is_main and scored_rows:
            self._apply_judge(result)
        return result

    def _apply_judge(self, result: ScreenResult) -> None:
        """Score responses with a judge and combine its verdict with the dP flags."""
        from persona_guard.judges import make_judge  # owned by the judges module; only needed here
        from persona_guard.traits import load_trait

        judge = make_judge(self.config.judge, **asdict(self.config.judge_endpoint))
        items = [(last_user_turn(row.prompt), row.response) for row in result.rows]
        for trait, scores in result.traits.items():
            verdicts = judge.score(load_trait(trait), items)
            scores.judge = np.array([np.nan if v.trait is None else v.trait for v in verdicts], dtype=np.float64)
            judged = np.nan_to_num(scores.judge, nan=-1.0) >= self.config.judge_threshold
            scores.flagged = scores.flagged & judged if self.config.judge_combine == "and" \
                else scores.flagged | judged


#: manifest keys -> what they mean, in the refusal of a resume with other inputs
_MANIFEST_NAMES = {"content_sha256": "data", "rows": "data", "vectors": "vectors or their layers (--vector, --layer)",
                   "model": "model (--model)", "base_answers": "base-answer settings", "shard_size": "--shard-size",
                   "batch_size": "--batch-size", "max_length": "--max-length", "mode": "mode (--no-generate)",
                   "policy": "flagging policy", "judge_threshold": "--judge-threshold",
                   "judge_combine": "--judge-combine"}


def _differences(recorded: dict, fingerprint: dict) -> list[str]:
    """What differs between a shard manifest and this run, one phrase per input (short values quoted:
    ``flagging policy: 'top 5%' there, 'top-k 1' here``)."""
    phrases: dict[str, str] = {}
    for key in fingerprint.keys() | recorded.keys():
        there, here = recorded.get(key), fingerprint.get(key)
        if there == here:
            continue
        name = _MANIFEST_NAMES.get(key, key.replace("_", " "))
        short = all(isinstance(v, (str, int, float, type(None))) and len(repr(v)) <= 40 for v in (there, here))
        phrases.setdefault(name, f"{name}: {there!r} there, {here!r} here" if short and key != "rows" else name)
    return sorted(phrases.values())


def _raw_rows(dataset) -> list[RawRow]:
    if isinstance(dataset, (str, Path)):
        return read_rows(dataset)
    if dataset and isinstance(dataset, list) and isinstance(dataset[0], RawRow):
        return list(dataset)
    return rows_from_records(dataset)
