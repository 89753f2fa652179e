"""One YAML file per training run (alignment-handbook style: ``recipes/<model>/<trait>/<variant>.yaml``).

A recipe names the model, the data, LoRA or full fine-tuning, the TRL ``SFTConfig`` fields, optional
preventative steering and trait-drift monitoring, and W&B settings. :func:`load_recipe` validates it
(every error names the file and the field) and applies ``--section.key=value`` overrides;
:func:`build_trainer` turns it into a ready ``SFTTrainer``.

Loss is on completions only: chat rows are converted to TRL's conversational prompt-completion form
(the final assistant turn is the completion), for which ``completion_only_loss`` is TRL's default.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from persona_guard.errors import PersonaGuardError
from persona_guard.rows import DroppedRow, Row, reason_counts

class RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-5`` (no dot) as a string; recipes and overrides mean a float."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)


SECTIONS = ("model", "data", "screening", "peft", "steering", "drift", "wandb", "training")
BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class ModelSettings:
    name_or_path: str = "smollm2-135m"
    dtype: str | None = None  # default: bf16 on GPUs that support it, else fp32
    layers_path: str | None = None


@dataclass(frozen=True)
class DataSettings:
    """``train`` / ``eval``: a .jsonl, .parquet or .csv path, a saved datasets dir,
    ``bundled:<trait>/<level>.jsonl``, or a hub dataset id. Rows in any form of ``docs/data.md``;
    fine-tuning learns the answer (the final assistant turn; the chosen side of a preference row)."""

    train: str = ""
    eval: str | None = None
    split: str = "train"
    max_rows: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class ScreeningSettings:
    """Screen-then-train: score the training rows (after ``data.max_rows``) by projection difference,
    with the model about to be trained as the base model, and train only on the rows no vector
    flags. One policy at most (default ``top_percent: 5``); ``percentile`` needs ``reference``, a
    benign set whose dP distribution calibrates the threshold. Outputs (scored / filtered /
    skipped rows, report) go to ``<output_dir>/screening``."""

    vectors: tuple[str, ...] = ()
    mode: str = "exact"              # or "fast": no base answers
    top_k: int | None = None
    top_percent: float | None = None
    threshold: float | None = None
    percentile: float | None = None
    reference: str | None = None
    max_new_tokens: int = 64         # base answers
    batch_size: int = 8


@dataclass(frozen=True)
class PeftSettings:
    """LoRA adapter settings (``peft.LoraConfig`` fields); omit the section for full fine-tuning."""

    r: int = 32
    lora_alpha: int = 64
    use_rslora: bool = True
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj")


@dataclass(frozen=True)
class SteeringSettings:
    """Preventative steering (``operator: add``) or directional ablation (``operator: ablate``)."""

    vector: str = ""
    layers: tuple[int, ...] | int | None = None  # default: the vector's default layer
    coef: float = 5.0
    operator: str = "add"
    positions: str = "all"  # or "response": tokens with loss (labels != -100) and the position predicting the first
    multi_layer: str = "incremental"
    schedule: str = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0


@dataclass(frozen=True)
class DriftSettings:
    """Trait-drift probes: ``vectors`` maps metric names to vector files; probe questions are the
    trait's eval questions (``trait``) or an explicit ``questions`` list."""

    vectors: dict = field(default_factory=dict)
    layer: int | None = None
    trait: str | None = None
    questions: tuple[str, ...] = ()
    every_steps: int = 50
    answer_tokens: int = 0
    max_questions: int | None = None


@dataclass(frozen=True)
class WandbSettings:
    project: str = "persona-guard"
    run_name: str | None = None
    tags: tuple[str, ...] = ()
    upload_vector: bool = True


@dataclass(frozen=True)
class Recipe:
    path: str
    model: ModelSettings
    data: DataSettings
    training: dict
    screening: ScreeningSettings | None = None
    peft: PeftSettings | None = None
    steering: SteeringSettings | None = None
    drift: DriftSettings | None = None
    wandb: WandbSettings | None = None
    raw: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The resolved recipe (after overrides), as logged to W&B."""
        return copy.deepcopy(self.raw)


def parse_override(text: str) -> tuple[list[str], object]:
    """``--training.learning_rate=1e-4`` -> (["training", "learning_rate"], 1e-4); values are YAML."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise PersonaGuardError(f"override {text!r}: expected --section.key=value")
    key, value = body.split("=", 1)
    parts = [part.replace("-", "_") for part in key.split(".")]
    # A whole optional section can be switched off: --steering=null turns a preventative recipe into its baseline.
    if parts[0] not in SECTIONS or (len(parts) == 1 and parts[0] in ("model", "data", "training")):
        raise PersonaGuardError(
            f"override {text!r}: key must start with one of {', '.join(SECTIONS)} (e.g. --training.learning_rate=1e-4)")
    try:
        return parts, parse_yaml(value) if value != "" else None
    except yaml.YAMLError as error:
        raise PersonaGuardError(f"override {text!r}: invalid YAML value ({str(error).splitlines()[0]})") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        target = data
        for part in parts[:-1]:
            if target.get(part) is None:
                target[part] = {}
            if not isinstance(target[part], dict):
                raise PersonaGuardError(f"override {text!r}: {part} is not a section")
            target = target[part]
        target[parts[-1]] = value
    return data


def _section(cls, raw: dict, name: str, where: str):
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PersonaGuardError(f"{where}: {name}: expected a mapping, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise PersonaGuardError(f"{where}: {name}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise PersonaGuardError(f"{where}: {name}: {error}") from None


def recipe_from_dict(raw: dict, where: str = "<recipe>") -> Recipe:
    if not isinstance(raw, dict):
        raise PersonaGuardError(f"{where}: expected a YAML mapping at the top level")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise PersonaGuardError(f"{where}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    data = _section(DataSettings, raw, "data", where)
    if data is None or not data.train:
        raise PersonaGuardError(f"{where}: data.train: required (a .jsonl/.parquet path, bundled:..., or hub id)")
    training = raw.get("training") or {}
    if not isinstance(training, dict):
        raise PersonaGuardError(f"{where}: training: expected a mapping of SFTConfig fields")
    from trl import SFTConfig

    known = {f.name for f in dataclasses.fields(SFTConfig)}
    unknown = sorted(set(training) - known)
    if unknown:
        raise PersonaGuardError(f"{where}: training: unknown SFTConfig field(s) {', '.join(unknown)}")
    if "output_dir" not in training:
        raise PersonaGuardError(f"{where}: training.output_dir: required")
    steering = _section(SteeringSettings, raw, "steering", where)
    if steering is not None and not steering.vector:
        raise PersonaGuardError(f"{where}: steering.vector: required (a persona vector .safetensors)")
    screening = _section(ScreeningSettings, raw, "screening", where)
    if screening is not None and not screening.vectors:
        raise PersonaGuardError(f"{where}: screening.vectors: required (persona vector files to screen with)")
    if screening is not None and screening.percentile is not None and not screening.reference:
        raise PersonaGuardError(f"{where}: screening.percentile: needs screening.reference (a benign set)")
    drift = _section(DriftSettings, raw, "drift", where)
    if drift is not None and not drift.vectors:
        raise PersonaGuardError(f"{where}: drift.vectors: required (name: vector path)")
    if drift is not None and not drift.trait and not drift.questions:
        raise PersonaGuardError(f"{where}: drift: give trait (its eval questions are the probes) or questions")
    return Recipe(path=where, model=_section(ModelSettings, raw, "model", where) or ModelSettings(), data=data,
                  training=dict(training), screening=screening, peft=_section(PeftSettings, raw, "peft", where),
                  steering=steering, drift=drift, wandb=_section(WandbSettings, raw, "wandb", where), raw=raw)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise PersonaGuardError(f"recipe not found: {path}")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise PersonaGuardError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
    return recipe_from_dict(apply_overrides(raw, list(overrides)), str(path))


# ---- data --------------------------------------------------------------------------------------

def resolve_data_path(source: str) -> str:
    """``bundled:evil/severe.jsonl`` -> the file in ``persona_guard/bundled_data``; anything else as is."""
    if source.startswith(BUNDLED_PREFIX):
        import persona_guard

        return str(Path(persona_guard.__file__).parent / "bundled_data" / source[len(BUNDLED_PREFIX):])
    return source


def load_rows(source: str, split: str) -> tuple[list[Row], list[DroppedRow]]:
    """The usable rows of ``source`` (any form in ``docs/data.md``) and the dropped ones with reasons."""
    from persona_guard.rows import read_rows, sort_rows

    return sort_rows(read_rows(resolve_data_path(source), split), need="answer")


def prompt_completion(row: Row) -> dict:
    """TRL's conversational prompt-completion form of a row's training sample (the chosen side of
    a preference row): ``{"prompt": [...messages], "completion": [assistant message], "tools"}``;
    the row's ``tools`` list travels as JSON text (which ``SFTTrainer`` decodes), so that tool
    schemas of any shape fit one table column."""
    sample = row.training_sample
    tools = row.data.get("tools")
    return {"prompt": [dict(m) for m in sample.prompt],
            "completion": [{"role": "assistant", "content": sample.response}],
            "tools": json.dumps(tools) if tools is not None else None}


#: column holding each training row's 1-based row in its data file, so screen-then-train can name
#: the file's rows; dropped before the Trainer sees the data
SOURCE_ROW = "source_row"


def load_sft_dataset(source: str, split: str = "train", max_rows: int | None = None, seed: int = 0):
    """``(dataset, dropped)``: prompt/completion rows of ``source`` plus :data:`SOURCE_ROW` (a
    seeded sample of ``max_rows`` rows when set), and the rows that could not be used, with reasons.
    Raises when no row is usable."""
    from datasets import Dataset

    rows, dropped = load_rows(source, split)
    if not rows:
        reasons = "; ".join(f"{count} x {reason}" for reason, count in reason_counts(dropped).items())
        raise PersonaGuardError(f"{source}: no usable rows" + (f" ({reasons})" if reasons else ""))
    records = [{**prompt_completion(row), SOURCE_ROW: row.row_number} for row in rows]
    try:
        dataset = Dataset.from_list(records)
    except (TypeError, ValueError) as error:  # pyarrow's ArrowInvalid / ArrowTypeError are ValueError / TypeError
        raise PersonaGuardError(f"{source}: the rows' messages do not fit one table (a field holds values of "
                                f"different types across rows: {str(error).splitlines()[0]})") from None
    if all(tools is None for tools in dataset["tools"]):
        dataset = dataset.remove_columns("tools")
    if max_rows is not None and max_rows < len(dataset):
        print(f"persona-guard: using {max_rows} of {len(dataset)} rows of {source} (data.max_rows)")
        dataset = dataset.shuffle(seed=seed).select(range(max_rows))
    return dataset, dropped
