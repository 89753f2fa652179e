"""Persona-vector extraction (the paper's pipeline), resumable.

``source="generate"`` (the paper): for each extraction question, each of the trait's 5 instruction
pairs and each sample, the model answers once under the trait system prompt (pos) and once under
the opposite one (neg). A judge scores every answer; a pair is kept when the pos answer shows the
trait (score >= 50), the neg answer does not (< 50) and both are coherent (>= 50). Hidden states of
the kept answers are captured at every layer in one pass and the vector is
``mean(pos) - mean(neg)`` per layer.

``source="exemplars"``: the trait's written extraction exemplars are teacher-forced (no generation,
no judge). Small models that follow "be evil" prompts poorly still yield a clean direction this way.

Generations and judgements are appended to ``out_dir/cache/*.jsonl`` as they are produced, so an
interrupted or repeated run redoes nothing. A key covers every input that changes the cached value:
for an answer, its generation chunk (see :func:`_generation_chunks`: every prompt's text, the
chunk's seed, the model's weights and chat template, the generation settings); for a judgement,
the judge (its name states its model, endpoint and scoring), the whole trait, the question and the
answer. A cached value is always the one a fresh run would compute.

Every run also measures held-out separation: the AUROC, per layer, of projections of the trait's
held-out exemplar answers (on eval questions, never used to build the vector), trait vs opposite.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from persona_guard import metrics
from persona_guard.activations import REDUCTIONS, capture_activations
from persona_guard.encoding import encode_chat
from persona_guard.errors import PersonaGuardError
from persona_guard.files import atomic_path, write_json_atomic
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.judges import Judge, JudgeScore
from persona_guard.metrics import mean_or_none
from persona_guard.models import LoadedModel, model_fingerprint
from persona_guard.schema import bounds, check
from persona_guard.traits import Trait
from persona_guard.vectors import AGGREGATORS, PersonaVector, compute_vector

SOURCES = ("generate", "exemplars")


@dataclass(frozen=True)
class ExtractionConfig:
    """How a vector is extracted; each field is also a flag of ``persona-guard extract`` (checked by
    :mod:`persona_guard.schema`). Judge scores are on the 0-100 scale of :mod:`persona_guard.judges`."""

    source: str = field(default="generate", metadata=bounds(
        choices=SOURCES, help="generate: the model answers under trait prompts (paper); exemplars: "
                              "teacher-force the trait's written exemplars"))
    method: str = field(default="response_mean", metadata=bounds(
        choices=REDUCTIONS, help="which positions' activations are averaged"))
    n_per_question: int = field(default=1, metadata=bounds(ge=1, help="samples per question and instruction pair"))
    questions: int | None = field(default=None, metadata=bounds(
        ge=1, help="use the first K extraction questions (default: all)"))
    max_new_tokens: int = field(default=64, metadata=bounds(ge=1, help="tokens per generated answer"))
    temperature: float = field(default=0.7, metadata=bounds(ge=0, help="sampling temperature; 0 = greedy"))
    batch_size: int = field(default=8, metadata=bounds(ge=1, help="prompts per generation / forward batch"))
    seed: int = field(default=0, metadata=bounds(ge=0))
    pos_threshold: float = field(default=50.0, metadata=bounds(
        ge=0, le=100, help="keep a pair only if the trait answer's judge score is >= this"))
    neg_threshold: float = field(default=50.0, metadata=bounds(
        ge=0, le=101, help="... and the opposite answer's score is < this (101: any)"))
    coherence_threshold: float = field(default=50.0, metadata=bounds(
        ge=0, le=100, help="... and both answers' coherence is >= this"))
    min_pairs: int = field(default=3, metadata=bounds(ge=1, help="fewer kept pairs than this is an error"))
    aggregator: str = field(default="mean_difference", metadata=bounds(
        choices=tuple(AGGREGATORS), help="how pairs become a direction"))

    def __post_init__(self) -> None:
        check(self)


@dataclass
class ExtractionResult:
    vector: PersonaVector
    vector_path: Path
    report: dict
    report_path: Path
    plot_path: Path | None
    generated: int  # answers generated in this run (0 when everything came from the cache)
    judged: int  # answers judged in this run


@dataclass(frozen=True)
class Pair:
    question: str
    instruction: int
    sample: int

    def system(self, trait: Trait, polarity: str) -> str:
        """The system prompt this pair's ``polarity`` ("pos" / "neg") answer is generated under."""
        pair = trait.instructions[self.instruction]
        return pair.pos if polarity == "pos" else pair.neg



# ---- small statistics ----------------------------------------------------------------------------


def effect_size(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """(mean pos - mean neg) / pooled std: the gap between the two projection clouds."""
    spread = torch.cat([pos - pos.mean(), neg - neg.mean()]).float().std()
    return float((pos.mean() - neg.mean()) / spread.clamp(min=1e-6))


def per_layer_separation(vector: PersonaVector, pos: torch.Tensor, neg: torch.Tensor,
                         layers: Sequence[int]) -> dict[int, dict[str, float]]:
    """AUROC and effect size of projections, per layer; ``pos``/``neg`` are ``[n, len(layers), d]``."""
    result = {}
    for slot, layer in enumerate(layers):
        if float(vector.directions[layer].norm()) == 0.0:
            result[layer] = {"auroc": 0.5, "effect_size": 0.0}
            continue
        p, n = vector.project(pos[:, slot], layer), vector.project(neg[:, slot], layer)
        labels = np.r_[np.ones(len(p)), np.zeros(len(n))]
        result[layer] = {"auroc": metrics.auroc(torch.cat([p, n]).double().numpy(), labels),
                         "effect_size": effect_size(p, n)}
    return result


def _heldout_samples(tokenizer, trait: Trait) -> list:
    """Held-out exemplar answers (eval questions, no system prompt): all pos, then all neg."""
    heldout = trait.heldout_exemplars()
    return [encode_chat(tokenizer, [{"role": "user", "content": e.question}], answer)
            for answers in ([e.pos for e in heldout], [e.neg for e in heldout])
            for e, answer in zip(heldout, answers)]


def heldout_activations(model: LoadedModel, trait: Trait, layers: Sequence[int], *, batch_size: int = 8,
                        progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Response-mean activations of the held-out exemplar answers: (pos, neg), each [n, len(layers), d]."""
    samples = _heldout_samples(model.tokenizer, trait)
    if not samples:
        raise PersonaGuardError(f"trait {trait.name!r} has no exemplars on eval questions (held-out set)")
    acts = capture_activations(model, samples, layers, ("response_mean",), batch_size=batch_size, progress=progress,
                               desc="held-out exemplars")["response_mean"]
    half = len(samples) // 2
    return acts[:half], acts[half:]


def heldout_separation(vector: PersonaVector, model: LoadedModel, trait: Trait, layers: Sequence[int] | None = None,
                       *, batch_size: int = 8, progress: bool = True) -> dict[int, dict[str, float]]:
    """Per layer: how well projections separate the trait's held-out exemplars (AUROC, effect size)."""
    layers = list(range(vector.num_layers + 1)) if layers is None else list(layers)
    pos, neg = heldout_activations(model, trait, layers, batch_size=batch_size, progress=progress)
    return per_layer_separation(vector, pos, neg, layers)


def best_layer(separation: dict[int, dict[str, float]]) -> int:
    """Highest held-out AUROC, ties broken by effect size; layer 0 (embeddings) is never chosen."""
    candidates = {l: s for l, s in separation.items() if l > 0}
    return max(candidates, key=lambda l: (round(candidates[l]["auroc"], 6), candidates[l]["effect_size"]))


# ---- cache ---------------------------------------------------------------------------------------


class JsonlCache:
    """Append-only JSONL keyed by ``row['key']`` (a string); the last row of a key wins.

    A damaged line (torn by a crash, not UTF-8, not a JSON object, or a field of ``fields`` missing or
    of another type; ``fields``: name -> accepted types) is ignored: that item is simply redone.
    Errors: ``path`` exists but is not a file."""

    def __init__(self, path: Path, fields: Mapping[str, tuple[type, ...]] | None = None) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists() and not path.is_file():
            raise PersonaGuardError(f"cache {path} is not a file; remove it or use another --out")
        if not path.is_file():
            return
        for line in path.read_bytes().splitlines():
            try:
                row = json.loads(line.decode("utf-8"))
            except ValueError:  # torn, undecodable or not JSON
                continue
            if (isinstance(row, dict) and isinstance(row.get("key"), str)
                    and all(isinstance(row.get(name), types) for name, types in (fields or {}).items())):
                self.rows[row["key"]] = row

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __getitem__(self, key: str) -> dict:
        return self.rows[key]

    def extend(self, rows: Sequence[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as tail:
                tail.seek(-1, 2)
                torn = tail.read(1) != b"\n"
        with self.path.open("a", encoding="utf-8") as handle:
            if torn:
                handle.write("\n")  # end a line torn by a crash, so it does not swallow the next row
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows[row["key"]] = row


def _fingerprint(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


Item = tuple[Pair, str]  # (pair, polarity)


def _generation_chunks(model, tokenizer, trait: Trait, pairs: Sequence[Pair], config: ExtractionConfig,
                       model_id: str) -> list[tuple[int, list[Item], list[str]]]:
    """``(index, items, keys)`` per generation chunk.

    Answers are generated in fixed chunks over the full item list, chunk ``k`` seeded with
    ``seed + 1000 k``, so an answer depends only on the configuration, not on what an earlier
    (interrupted) run cached. A sampled answer depends on its whole chunk (the batch's prompts and
    seed), so its key digests exactly that: the model (weights and chat template), the generation
    settings, the chunk's seed and every prompt's *text* (system prompt, question, sample), plus the
    answer's position. A cached answer is then always the one a fresh run would generate.
    """
    setting = _fingerprint(model=model_fingerprint(model, model_id),
                           chat_template=getattr(tokenizer, "chat_template", None),
                           max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    items = [(pair, polarity) for pair in pairs for polarity in ("pos", "neg")]
    size = max(1, config.batch_size)
    chunks = []
    for index, begin in enumerate(range(0, len(items), size)):
        part = items[begin:begin + size]
        texts = [[p.system(trait, polarity), p.question, p.sample] for p, polarity in part]
        digest = _fingerprint(setting=setting, seed=config.seed + 1000 * index, prompts=texts)
        chunks.append((index, part, [f"{digest}|{position}" for position in range(len(part))]))
    return chunks


# ---- pipeline ------------------------------------------------------------------------------------


def _prompt(system: str, question: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def _generate_answers(model, tokenizer, trait: Trait, chunks: Sequence[tuple[int, list[Item], list[str]]],
                      config: ExtractionConfig, cache: JsonlCache, progress: bool) -> int:
    todo = [(index, part, keys) for index, part, keys in chunks if any(key not in cache for key in keys)]
    generated = 0
    with tqdm(total=sum(len(part) for _, part, _ in todo), desc=f"generating {trait.name} answers",
              disable=not progress, unit="answer") as bar:
        for index, part, keys in todo:
            prompts = [_prompt(p.system(trait, polarity), p.question) for p, polarity in part]
            answers = generate_responses(model, tokenizer, prompts, GenerationConfig(
                max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                batch_size=max(1, config.batch_size), seed=config.seed + 1000 * index), progress=False)
            new = [(key, p, polarity, answer) for key, (p, polarity), answer in zip(keys, part, answers)
                   if key not in cache]
            cache.extend([{"key": key, "polarity": polarity, "question": p.question, "instruction": p.instruction,
                           "sample": p.sample, "seed": config.seed + 1000 * index, "answer": answer}
                          for key, p, polarity, answer in new])
            generated += len(new)
            bar.update(len(part))
    return generated


#: what a cached judgement row must hold (:class:`~persona_guard.judges.JudgeScore`'s fields)
JUDGEMENT_FIELDS: dict[str, tuple[type, ...]] = {"trait": (int, float, type(None)),
                                                 "coherence": (int, float, type(None)), "refusal": (bool,)}


def _judge_answers(judge: Judge, trait: Trait, items: Sequence[tuple[str, str]], cache: JsonlCache,
                   progress: bool) -> tuple[list[JudgeScore], int]:
    def key(question: str, answer: str) -> str:
        return _fingerprint(judge=judge.name, trait=trait.to_dict(), question=question, answer=answer)

    todo = sorted({(q, a) for q, a in items if key(q, a) not in cache})
    chunk = 32
    with tqdm(total=len(todo), desc=f"judging ({judge.name})", disable=not progress, unit="answer") as bar:
        for begin in range(0, len(todo), chunk):
            part = todo[begin:begin + chunk]
            scores = judge.score(trait, part)
            cache.extend([{"key": key(q, a), "judge": judge.name, **asdict(s)} for (q, a), s in zip(part, scores)])
            bar.update(len(part))
    scores = []
    for q, a in items:
        row = cache[key(q, a)]
        scores.append(JudgeScore(trait=row["trait"], coherence=row["coherence"], refusal=row["refusal"]))
    return scores, len(todo)


def drop_reasons(pos: JudgeScore, neg: JudgeScore, config: ExtractionConfig) -> list[str]:
    """Why a (pos, neg) pair fails the paper's filter; empty when it is kept."""
    reasons = []
    if pos.refusal or neg.refusal:
        reasons.append("refusal")
    if pos.trait is None or neg.trait is None:
        reasons.append("no trait score")
    else:
        if pos.trait < config.pos_threshold:
            reasons.append("pos answer lacks the trait")
        if neg.trait >= config.neg_threshold:
            reasons.append("neg answer shows the trait")
    if pos.coherence is None or neg.coherence is None or min(pos.coherence, neg.coherence) < config.coherence_threshold:
        reasons.append("incoherent")
    return reasons


def exemplar_pairs(trait: Trait, config: ExtractionConfig) -> list:
    """The written exemplar pairs ``source="exemplars"`` teacher-forces (the first ``config.questions``).

    Raises PersonaGuardError when the trait has none, or fewer than ``config.min_pairs`` (checked by
    ``persona-guard extract`` before it loads the model)."""
    exemplars = trait.extraction_exemplars()
    if not exemplars:
        raise PersonaGuardError(f"trait {trait.name!r} has no exemplars on extraction questions for "
                                "--source exemplars")
    if config.questions is not None:
        exemplars = exemplars[:config.questions]
    if len(exemplars) < config.min_pairs:
        raise PersonaGuardError(f"trait {trait.name!r} has {len(exemplars)} exemplar pairs on extraction "
                                f"questions, fewer than --min-pairs {config.min_pairs}")
    return exemplars


def extract_vector(loaded: LoadedModel, trait: Trait, out_dir: str | Path, *,
                   judge: Judge | None = None, config: ExtractionConfig = ExtractionConfig(),
                   progress: bool = True, plots: bool = True) -> ExtractionResult:
    """Run the pipeline and write ``out_dir/<trait>.safetensors``, ``report.json`` and a PNG plot.
    The vector is read at every layer of ``loaded`` and records ``loaded.model_id``."""
    out_dir = Path(out_dir)  # created by the first file written into it
    model, tokenizer, model_id = loaded.model, loaded.tokenizer, loaded.model_id
    layers = list(range(loaded.num_layers + 1))
    report: dict = {"trait": trait.name, "trait_source": trait.source, "model": model_id,
                    "config": asdict(config)}
    generated = judged = 0
    if config.source == "generate":
        if judge is None:
            raise PersonaGuardError("source 'generate' needs a judge (e.g. make_judge('offline'))")
        questions = trait.extraction_questions[:config.questions]
        pairs = [Pair(q, i, s) for q in questions for i in range(len(trait.instructions))
                 for s in range(config.n_per_question)]
        generations = JsonlCache(out_dir / "cache" / "generations.jsonl", {"answer": (str,)})
        chunks = _generation_chunks(model, tokenizer, trait, pairs, config, model_id)
        generated = _generate_answers(model, tokenizer, trait, chunks, config, generations, progress)
        answers = {item: generations[key]["answer"] for _, part, keys in chunks for item, key in zip(part, keys)}
        items = [(p.question, answers[(p, pol)]) for p in pairs for pol in ("pos", "neg")]
        judgements = JsonlCache(out_dir / "cache" / "judgements.jsonl", JUDGEMENT_FIELDS)
        scores, judged = _judge_answers(judge, trait, items, judgements, progress)
        kept, reasons = [], Counter()
        for index, pair in enumerate(pairs):
            why = drop_reasons(scores[2 * index], scores[2 * index + 1], config)
            reasons.update(why)
            if not why:
                kept.append(pair)
        report["pairs"] = {"total": len(pairs), "kept": len(kept), "dropped": len(pairs) - len(kept),
                           "drop_reasons": dict(reasons), "judge": judge.name,
                           "mean_pos_trait": mean_or_none([s.trait for s in scores[0::2]]),
                           "mean_neg_trait": mean_or_none([s.trait for s in scores[1::2]])}
        if len(kept) < config.min_pairs:
            _write_json(out_dir / "report.json", report)
            detail = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "none"
            raise PersonaGuardError(
                f"only {len(kept)} of {len(pairs)} answer pairs passed the judge filter (need {config.min_pairs}; "
                f"drop reasons: {detail}); the model may follow the '{trait.name}' prompts poorly: try "
                "--source exemplars, a larger --n-per-question, or a lower --pos-threshold")
        pos_samples = [encode_chat(tokenizer, _prompt(trait.instructions[p.instruction].pos, p.question),
                                   answers[(p, "pos")]) for p in kept]
        neg_samples = [encode_chat(tokenizer, _prompt(trait.instructions[p.instruction].neg, p.question),
                                   answers[(p, "neg")]) for p in kept]
    else:
        exemplars = exemplar_pairs(trait, config)
        report["pairs"] = {"total": len(exemplars), "kept": len(exemplars), "dropped": 0, "drop_reasons": {}}
        pos_samples = [encode_chat(tokenizer, [{"role": "user", "content": e.question}], e.pos) for e in exemplars]
        neg_samples = [encode_chat(tokenizer, [{"role": "user", "content": e.question}], e.neg) for e in exemplars]
    heldout_samples = _heldout_samples(tokenizer, trait)
    # one pass over the extraction samples and the held-out exemplars
    reductions = tuple(dict.fromkeys((config.method, "response_mean")))
    acts = capture_activations(loaded, pos_samples + neg_samples + heldout_samples, layers, reductions,
                               batch_size=config.batch_size, progress=progress, desc="capturing activations")
    n_pos, n_train = len(pos_samples), len(pos_samples) + len(neg_samples)
    pos_acts, neg_acts = acts[config.method][:n_pos], acts[config.method][n_pos:n_train]
    directions = compute_vector(pos_acts, neg_acts, AGGREGATORS[config.aggregator])
    vector = PersonaVector(trait=trait.name, model_id=model_id, directions=directions, method=config.method,
                           n_pos=len(pos_samples), n_neg=len(neg_samples), metadata={"aggregator": config.aggregator})
    training = per_layer_separation(vector, pos_acts, neg_acts, layers)
    heldout = None
    if heldout_samples:
        held = acts["response_mean"][n_train:]
        half = len(heldout_samples) // 2
        heldout = per_layer_separation(vector, held[:half], held[half:], layers)
    vector.default_layer = best_layer(heldout or training)
    report["default_layer"] = vector.default_layer
    report["default_layer_rule"] = "max held-out AUROC" if heldout else "max training AUROC (no held-out exemplars)"
    report["layers"] = [{"layer": l, "norm": float(vector.directions[l].norm()),
                         "train_auroc": training[l]["auroc"], "train_effect_size": training[l]["effect_size"],
                         **({"heldout_auroc": heldout[l]["auroc"], "heldout_effect_size": heldout[l]["effect_size"]}
                            if heldout else {})} for l in layers]
    vector.metadata = {"source": config.source, "judge": report["pairs"].get("judge"),
                       "trait_source": trait.source, "kept_pairs": report["pairs"]["kept"],
                       "heldout_auroc": {str(l): heldout[l]["auroc"] for l in layers} if heldout else None}
    vector_path = vector.save(out_dir / f"{trait.name}.safetensors")
    report_path = _write_json(out_dir / "report.json", report)
    plot_path = plot_layers(report, out_dir / "layers.png") if plots else None
    return ExtractionResult(vector, vector_path, report, report_path, plot_path, generated, judged)


def _write_json(path: Path, data: dict) -> Path:
    return write_json_atomic(path, data)


def plot_layers(report: dict, path: Path) -> Path:
    """Per-layer vector norm (left) and separation AUROC (right) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    layers = [r["layer"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(layers, [r["norm"] for r in rows], marker="o")
    left.set(title=f"{report['trait']}: vector norm per layer", xlabel="layer", ylabel="||mean(pos) - mean(neg)||")
    right.plot(layers, [r["train_auroc"] for r in rows], marker="o", label="extraction samples")
    if "heldout_auroc" in rows[0]:
        right.plot(layers, [r["heldout_auroc"] for r in rows], marker="s", label="held-out exemplars")
    right.axvline(report["default_layer"], color="grey", linestyle="--",
                  label=f"default layer {report['default_layer']}")
    right.set(title="separation of projections (AUROC)", xlabel="layer", ylabel="AUROC", ylim=(0.0, 1.05))
    right.legend()
    figure.tight_layout()
    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=110)
    plt.close(figure)
    return path
