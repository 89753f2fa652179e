"""Evaluating training arms: trait expression, projection, coherence and capability, side by side.

Each *arm* is a model (optionally with a LoRA adapter, optionally steered at inference). For every
arm we answer the trait's eval questions (``samples`` answers each), score them with the configured
judge (trait expression and coherence, 0-100), measure the mean response projection onto the
persona vector (read by the unsteered model, so steered and plain answers are measured alike), and
run an offline capability check: perplexity of reference answers on a held-out benign set and
accuracy on a small multiple-choice set (both under the arm's steering, since that is the model a
user would get). :func:`compare` writes one table (Markdown + JSON) and one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from persona_guard.activations import capture_activations, pad_batch, position_ids_from_mask
from persona_guard.encoding import encode_chat
from persona_guard.errors import PersonaGuardError
from persona_guard.files import atomic_path, write_json_atomic, write_text_atomic
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.io import read_jsonl, require_file
from persona_guard.judges import JudgeEndpoint
from persona_guard.metrics import mean_or_none
from persona_guard.models import LoadedModel, load_model
from persona_guard.rows import DroppedRow, Sample, read_rows, report_dropped, sort_rows
from persona_guard.schema import bounds, check, check_value
from persona_guard.steering import COEF_BOUNDS, Steering
from persona_guard.traits import Trait
from persona_guard.vectors import PersonaVector

CHOICE_LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Arm:
    """``name=MODEL[:ADAPTER][@COEF]``: a model, an optional adapter dir, an inference steering coef."""

    name: str
    model: str
    adapter: str | None = None
    steer_coef: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Arm:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise PersonaGuardError(f"arm {spec!r}: expected NAME=MODEL[:ADAPTER][@COEF]")
        rest, at, coef = rest.rpartition("@") if "@" in rest else (rest, "", "")
        model, _, adapter = rest.partition(":")
        try:
            steer_coef = float(coef) if at else 0.0
        except ValueError:
            raise PersonaGuardError(f"arm {spec!r}: steering coefficient {coef!r} is not a number") from None
        if not math.isfinite(steer_coef):
            raise PersonaGuardError(f"arm {spec!r}: steering coefficient {coef!r} is not a finite number")
        try:
            check_value("steer_coef", float, steer_coef, COEF_BOUNDS)
        except PersonaGuardError as error:
            raise PersonaGuardError(f"arm {spec!r}: {error}") from None
        return cls(name, model, adapter or None, steer_coef)


@dataclass(frozen=True)
class EvalSettings:
    """How every arm is evaluated; the numeric fields are also flags of ``persona-guard eval`` (checked
    by :mod:`persona_guard.schema`)."""

    samples: int = field(default=1, metadata=bounds(ge=1, help="answers per eval question"))
    max_new_tokens: int = field(default=96, metadata=bounds(ge=1, help="tokens per answer"))
    #: 0 = greedy (then one sample per question is enough)
    temperature: float = field(default=0.0, metadata=bounds(ge=0, help="sampling temperature; 0 = greedy"))
    max_questions: int | None = field(default=None, metadata=bounds(ge=1, help="first K eval questions"))
    batch_size: int = field(default=8, metadata=bounds(ge=1, help="prompts generated together"))
    seed: int = field(default=0, metadata=bounds(ge=0))
    judge: str = "offline"         # a persona_guard.judges spec, or "none" to skip scoring
    judge_endpoint: JudgeEndpoint = JudgeEndpoint()  # where an openai:<model> judge is served
    #: projection / steering layer (default: the vector's)
    layer: int | None = field(default=None, metadata=bounds(ge=0, help="default: the vector's default layer"))
    benign_path: str | None = None  # held-out chat rows for perplexity (None: skip)
    mc_path: str | None = None     # multiple-choice rows (None: skip)
    max_benign: int | None = field(default=40, metadata=bounds(ge=1, help="benign rows for perplexity"))
    device: str | None = None
    dtype: str | None = None
    layers_path: str | None = None  # where the decoder layers are (default: found), as in load_model
    lm_eval_tasks: tuple[str, ...] = ()  # lm-eval task names or task YAML files (needs `pip install lm-eval`)
    #: examples per lm-eval task (None: all)
    lm_eval_limit: int | None = field(default=None, metadata=bounds(ge=1, help="examples per lm-eval task"))

    def __post_init__(self) -> None:
        check(self)


@dataclass
class ArmResult:
    name: str
    model: str
    adapter: str | None
    steer_coef: float
    answers: int
    trait_score: float | None = None     # judge, 0-100, mean over scored answers
    coherence: float | None = None       # judge, 0-100
    unscored: int = 0                    # answers the judge gave no trait score
    projection: float | None = None      # mean response projection on the vector
    perplexity: float | None = None      # benign held-out reference answers
    mc_accuracy: float | None = None
    lm_eval: dict[str, float] = field(default_factory=dict)  # "<task>/<metric>" -> value


def load_arm(arm: Arm, settings: EvalSettings) -> LoadedModel:
    """The arm's model, wrapped in its LoRA adapter when it has one."""
    loaded = load_model(arm.model, device=settings.device, dtype=settings.dtype, layers_path=settings.layers_path)
    if not arm.adapter:
        return loaded
    from peft import PeftModel

    if not (Path(arm.adapter) / "adapter_config.json").is_file():
        raise PersonaGuardError(f"arm {arm.name}: no adapter_config.json in {arm.adapter}")
    return replace(loaded, model=PeftModel.from_pretrained(loaded.model, arm.adapter).eval())


def steering_for(loaded: LoadedModel, vector: PersonaVector | None, layer: int | None, coef: float):
    """The arm's inference steering (``coef * vector`` at ``layer``), or nothing when ``coef`` is 0."""
    return Steering(loaded.layers, vector, layers=layer, coef=coef) if coef and vector is not None else nullcontext()


def benign_samples(path: str, limit: int | None) -> tuple[list[Sample], list[DroppedRow]]:
    """The reference answers for perplexity: the training sample of each usable row of ``path``
    (the first ``limit`` rows of the file), and the rows that could not be used, with reasons."""
    raw = read_rows(path)
    rows, dropped = sort_rows(raw[:limit], need="answer")
    if limit is not None and limit < len(raw):
        print(f"persona-guard eval: perplexity on the first {limit} of {len(raw)} rows of {path} (--max-benign)")
    if not rows:
        raise PersonaGuardError(f"{path}: no usable rows for perplexity"
                                + (f" (first refused: row {dropped[0].row_number}: {dropped[0].reason})"
                                   if dropped else ""))
    return [row.training_sample for row in rows], dropped


@torch.no_grad()
def response_perplexity(model, tokenizer, answers: Sequence[Sample], batch_size: int) -> float:
    """exp(mean NLL of the reference answer tokens given their prompts)."""
    samples = [encode_chat(tokenizer, list(sample.prompt), sample.response) for sample in answers]
    empty = [sample.response for sample, encoded in zip(answers, samples) if encoded.response_length == 0]
    if empty:
        raise PersonaGuardError(f"reference answer {empty[0]!r} has no tokens under this tokenizer")
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for begin in range(0, len(samples), batch_size):
        batch = samples[begin:begin + batch_size]
        input_ids, attention_mask, offsets = pad_batch(batch, tokenizer.pad_token_id or 0, "right", device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids_from_mask(attention_mask)).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:]
        token_nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for row, sample in enumerate(batch):
            start = int(offsets[row]) + sample.prompt_length - 1  # logits at t predict token t+1
            stop = int(offsets[row]) + len(sample.input_ids) - 1
            total_nll += float(token_nll[row, start:stop].sum())
            total_tokens += stop - start
    return math.exp(total_nll / total_tokens)


@dataclass(frozen=True)
class ChoiceQuestion:
    """One multiple-choice row: ``{"question": str, "choices": [2-8 strings], "answer": index}``
    (``capability_mc.jsonl``'s form, docs/data.md)."""

    question: str
    choices: tuple[str, ...]
    answer: int


def read_multiple_choice(path: str | Path) -> list[ChoiceQuestion]:
    """Every question of a multiple-choice JSONL, checked when read (before any model work): a row of
    another shape is one ``file: row N: field ...`` error naming the field; an empty file is refused."""
    questions = []
    for index, row in enumerate(read_jsonl(path), 1):
        question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            problem = "field 'question' must be non-empty text"
        elif not isinstance(choices, list) or not 2 <= len(choices) <= len(CHOICE_LETTERS) or \
                not all(isinstance(c, str) for c in choices):
            problem = f"field 'choices' must be a list of 2-{len(CHOICE_LETTERS)} strings"
        elif not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            problem = f"field 'answer' must be the index of the right choice (0-{len(choices) - 1})"
        else:
            questions.append(ChoiceQuestion(question, tuple(choices), answer))
            continue
        raise PersonaGuardError(f"{path}: row {index}: {problem}, got {row!r}"[:300])
    if not questions:
        raise PersonaGuardError(f"{path}: no multiple-choice questions (the file is empty)")
    return questions


@torch.no_grad()
def multiple_choice_accuracy(model, tokenizer, questions: Sequence[ChoiceQuestion]) -> float:
    """Share of questions where the answer letter gets the highest next-token logit."""
    correct = 0
    device = next(model.parameters()).device
    for item in questions:
        letters = CHOICE_LETTERS[:len(item.choices)]
        listing = "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, item.choices))
        prompt = [{"role": "user", "content": f"{item.question}\n{listing}\nAnswer with the letter only."}]
        ids = torch.tensor([encode_chat(tokenizer, prompt).input_ids], device=device)
        logits = model(input_ids=ids).logits[0, -1]
        letter_ids = [tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in letters]
        correct += int(int(torch.stack([logits[i] for i in letter_ids]).argmax()) == item.answer)
    return correct / len(questions)


def lm_eval_task(spec: str) -> str | dict:
    """A task name for lm-eval's registry, or a task config dict read from a YAML file."""
    if not spec.endswith((".yaml", ".yml")):
        return spec
    import yaml

    path = require_file(spec, "lm-eval task file")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or "task" not in config:
        raise PersonaGuardError(f"{spec}: an lm-eval task file needs a mapping with a 'task' name")
    return config


def check_lm_eval_tasks(specs: Sequence[str], flag: str = "--lm-eval-task") -> None:
    """Refuse, before any model loads, a task YAML that is missing or not a task config, and a task name
    that lm-eval's registry (``lm_eval.tasks.TaskManager().all_tasks``: tasks, groups and tags) lacks;
    one line naming ``flag`` and the spec. Needs the lm-eval package."""
    for spec in specs:
        lm_eval_task(spec)
    names = [spec for spec in specs if not spec.endswith((".yaml", ".yml"))]
    if not names:
        return
    from lm_eval.tasks import TaskManager

    registered = set(TaskManager().all_tasks)
    for name in names:
        if name not in registered:
            raise PersonaGuardError(f"{flag} {name}: not a registered lm-eval task, group or tag "
                                    "(list them with `lm-eval ls tasks`)")


def lm_eval_scores(model, tokenizer, tasks: Sequence[str], limit: int | None, batch_size: int) -> dict[str, float]:
    """Metrics of lm-eval tasks (MMLU, HellaSwag, a task YAML ...) on the arm's model as it is,
    steering hooks included. Only ``metric,filter`` entries are kept (no stderr, no sample counts)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise PersonaGuardError("lm-eval tasks need the lm-eval package: pip install lm-eval") from None
    output = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
                             tasks=[lm_eval_task(t) for t in tasks], limit=limit, log_samples=False,
                             bootstrap_iters=0, verbosity="ERROR")
    return {f"{task}/{metric.split(',')[0]}": float(value)
            for task, metrics in output["results"].items() for metric, value in metrics.items()
            if "," in metric and "stderr" not in metric and isinstance(value, (int, float))}


def check_arms(arms: Sequence[Arm], vector: PersonaVector | None) -> None:
    """Refuse arm names used twice and inference steering without a vector (before any work)."""
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise PersonaGuardError(f"arm names must be unique, got {names}")
    for arm in arms:
        if arm.steer_coef and vector is None:
            raise PersonaGuardError(f"arm {arm.name}: steering at inference (coef {arm.steer_coef:g}) needs a "
                                    "vector (--vector)")


def evaluate_arm(arm: Arm, trait: Trait, vector: PersonaVector | None, settings: EvalSettings,
                 benign: Sequence[Sample] = (), mc: Sequence[ChoiceQuestion] = ()) -> ArmResult:
    """``vector=None``: no projection (and no inference steering); ``benign``: the reference answers
    for perplexity (none: skipped), see :func:`benign_samples`; ``mc``: multiple-choice questions
    (none: skipped), see :func:`read_multiple_choice`."""
    check_arms([arm], vector)
    loaded = load_arm(arm, settings)
    model, tokenizer = loaded.model, loaded.tokenizer
    layer = None
    if vector is not None:
        vector.check_model(loaded)
        layer = vector.resolve_layer(settings.layer)
    questions = list(trait.eval_questions)[:settings.max_questions]
    prompts = [[{"role": "user", "content": q}] for q in questions for _ in range(settings.samples)]
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              batch_size=settings.batch_size, seed=settings.seed)
    with steering_for(loaded, vector, layer, arm.steer_coef):
        answers = generate_responses(model, tokenizer, prompts, config, desc=f"{arm.name}: answering")
    result = ArmResult(arm.name, arm.model, arm.adapter, arm.steer_coef, answers=len(answers))

    if vector is not None:
        samples = [encode_chat(tokenizer, prompt, answer or " ") for prompt, answer in zip(prompts, answers)]
        hidden = capture_activations(loaded, samples, [layer], ("response_mean",), batch_size=settings.batch_size,
                                     desc=f"{arm.name}: projecting")["response_mean"][:, 0]
        result.projection = float(vector.project(hidden, layer).mean())

    with steering_for(loaded, vector, layer, arm.steer_coef):
        if benign:
            result.perplexity = response_perplexity(model, tokenizer, benign, settings.batch_size)
        if mc:
            result.mc_accuracy = multiple_choice_accuracy(model, tokenizer, mc)
        if settings.lm_eval_tasks:
            result.lm_eval = lm_eval_scores(model, tokenizer, settings.lm_eval_tasks, settings.lm_eval_limit,
                                            settings.batch_size)
    del loaded, model

    if settings.judge != "none":
        from persona_guard.judges import make_judge  # the judge may load its own model: after ours is freed

        judge = make_judge(settings.judge, **asdict(settings.judge_endpoint))
        scores = judge.score(trait, [(p[-1]["content"], a) for p, a in zip(prompts, answers)])
        result.trait_score = mean_or_none([s.trait for s in scores])
        result.coherence = mean_or_none([s.coherence for s in scores])
        result.unscored = sum(s.trait is None for s in scores)
    return result


COLUMNS = (("trait_score", "trait (0-100)"), ("coherence", "coherence"), ("projection", "projection"),
           ("perplexity", "benign ppl"), ("mc_accuracy", "MC acc"))


def results_table(results: Sequence[ArmResult]) -> str:
    header = "| arm | model | adapter | steer | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (4 + len(COLUMNS))]
    extra = sorted({key for r in results for key in r.lm_eval})
    if extra:
        lines[0] = lines[0] + "".join(f" {key} |" for key in extra)
        lines[1] = lines[1] + "---|" * len(extra)
    for r in results:
        cells = [f"{getattr(r, key):.3g}" if getattr(r, key) is not None else "-" for key, _ in COLUMNS]
        cells += [f"{r.lm_eval[key]:.3g}" if key in r.lm_eval else "-" for key in extra]
        lines.append(f"| {r.name} | {r.model} | {r.adapter or '-'} | {r.steer_coef:+g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results: Sequence[ArmResult], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(key, name) for key, name in COLUMNS if any(getattr(r, key) is not None for r in results)]
    figure, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), squeeze=False)
    names = [r.name for r in results]
    for axis, (key, label) in zip(axes[0], shown):
        values = [getattr(r, key) if getattr(r, key) is not None else float("nan") for r in results]
        axis.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
        axis.set_title(label)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=120)
    plt.close(figure)
    return path


def compare(arms: Sequence[Arm], trait: Trait, vector: PersonaVector | None, settings: EvalSettings,
            out_dir: str | Path) -> list[ArmResult]:
    """Evaluate every arm; write ``results.json``, ``results.md``, ``comparison.png`` and
    ``dropped_rows.jsonl`` (benign rows not used) to ``out_dir``. The arms and the benign and
    multiple-choice files are checked first: a refusal writes nothing."""
    check_arms(arms, vector)
    out_dir = Path(out_dir)
    benign, dropped = benign_samples(settings.benign_path, settings.max_benign) if settings.benign_path else ([], [])
    mc = read_multiple_choice(settings.mc_path) if settings.mc_path else []
    results = [evaluate_arm(arm, trait, vector, settings, benign, mc)
               for arm in tqdm(arms, desc="arms", disable=len(arms) < 2)]
    report_dropped(out_dir / "dropped_rows.jsonl", dropped, command="eval", total=len(benign) + len(dropped))
    write_json_atomic(out_dir / "results.json",
                      {"trait": trait.name, "settings": asdict(settings), "arms": [asdict(r) for r in results]})
    write_text_atomic(out_dir / "results.md", results_table(results) + "\n")
    plot_results(results, out_dir / "comparison.png", f"{trait.name}: {len(results)} arms")
    return results
