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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from persona_guard.errors import PersonaGuardError
from persona_guard.io import require_file
from persona_guard.rows import DroppedRow, Row, reason_counts
from persona_guard.schema import FieldError, bounds, check, check_value, from_mapping, to_mapping
from persona_guard.screening.scorer import ScreeningConfig
from persona_guard.training.drift import ProbeSettings
from persona_guard.training.steering_callback import SteeringSettings


class RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-5`` (no dot) as a string; recipes and overrides mean a float."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)


BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class ModelSettings:
    name_or_path: str = "smollm2-135m"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None  # None: models.default_dtype
    layers_path: str | None = None

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class DataSettings:
    """``train`` / ``eval``: a .jsonl, .parquet or .csv path, a saved datasets dir,
    ``bundled:<trait>/<level>.jsonl``, or a hub dataset id. Rows in any form of ``docs/data.md``;
    fine-tuning learns the answer (the final assistant turn; the chosen side of a preference row)."""

    train: str = ""
    eval: str | None = None
    split: str = "train"
    max_rows: int | None = field(default=None, metadata=bounds(ge=1))
    seed: int = field(default=0, metadata=bounds(ge=0))

    def __post_init__(self) -> None:
        check(self)
        if not self.train:
            raise FieldError("train", "required (a .jsonl/.parquet path, bundled:..., or hub id)")


@dataclass
class ScreeningSection(ScreeningConfig):
    """Screen-then-train: :class:`~persona_guard.screening.ScreeningConfig` plus the vector files and
    an optional benign ``reference`` set. The training rows (after ``data.max_rows``) are scored by
    projection difference, with the model about to be trained as the base model, and only the rows
    no vector flags are trained on. Outputs (scored / filtered / skipped rows, report) go to
    ``<output_dir>/screening``."""

    vectors: tuple[str, ...] = ()
    reference: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.vectors:
            raise FieldError("vectors", "required (persona vector files to screen with)")
        if self.policy.percentile is not None and not self.reference:
            raise FieldError("policy.percentile", "needs screening.reference (a benign set)")


@dataclass(frozen=True)
class PeftSettings:
    """LoRA adapter settings (``peft.LoraConfig`` fields); omit the section for full fine-tuning."""

    r: int = field(default=32, metadata=bounds(ge=1))
    lora_alpha: float = field(default=64, metadata=bounds(gt=0))
    use_rslora: bool = True
    lora_dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    target_modules: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj")

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class SteeringSection(SteeringSettings):
    """Preventative steering (``operator: add``) or directional ablation (``operator: ablate``):
    the vector file plus :class:`~persona_guard.training.SteeringSettings`."""

    vector: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.vector:
            raise FieldError("vector", "required (a persona vector .safetensors)")


@dataclass(frozen=True)
class DriftSection(ProbeSettings):
    """Trait-drift probes: :class:`~persona_guard.training.drift.ProbeSettings` plus ``vectors`` (metric
    names -> vector files) and the probe questions: the trait's eval questions (``trait``) or an
    explicit ``questions`` list, the first ``max_questions`` of them. ``layer`` overrides the vectors'
    default layers."""

    vectors: dict[str, str] = field(default_factory=dict)
    layer: int | None = field(default=None, metadata=bounds(ge=0))
    trait: str | None = None
    questions: tuple[str, ...] = ()
    max_questions: int | None = field(default=None, metadata=bounds(ge=1))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.vectors:
            raise FieldError("vectors", "required (name: vector path)")
        if not self.trait and not self.questions:
            raise PersonaGuardError("give trait (its eval questions are the probes) or questions")


@dataclass(frozen=True)
class WandbSettings:
    project: str = "persona-guard"
    run_name: str | None = None
    tags: tuple[str, ...] = ()
    upload_vector: bool = True

    def __post_init__(self) -> None:
        check(self)


#: Ranges of common ``SFTConfig`` fields (types come from SFTConfig's own annotations).
TRAINING_BOUNDS: dict[str, dict[str, float]] = {
    "learning_rate": bounds(gt=0), "num_train_epochs": bounds(gt=0), "max_steps": bounds(ge=-1),
    "per_device_train_batch_size": bounds(ge=1), "per_device_eval_batch_size": bounds(ge=1),
    "gradient_accumulation_steps": bounds(ge=1), "warmup_steps": bounds(ge=0), "warmup_ratio": bounds(ge=0, le=1),
    "weight_decay": bounds(ge=0), "max_grad_norm": bounds(ge=0), "logging_steps": bounds(gt=0),
    "save_steps": bounds(gt=0), "eval_steps": bounds(gt=0), "max_length": bounds(ge=1), "seed": bounds(ge=0),
    "data_seed": bounds(ge=0), "adam_beta1": bounds(ge=0, lt=1), "adam_beta2": bounds(ge=0, lt=1),
    "adam_epsilon": bounds(gt=0),
}

#: recipe section -> its dataclass; ``training`` is TRL's ``SFTConfig`` (checked by :func:`training_args`)
SECTION_TYPES: dict[str, type] = {
    "model": ModelSettings, "data": DataSettings, "screening": ScreeningSection, "peft": PeftSettings,
    "steering": SteeringSection, "drift": DriftSection, "wandb": WandbSettings,
}
SECTIONS = (*SECTION_TYPES, "training")


@dataclass(frozen=True)
class Recipe:
    path: str
    model: ModelSettings
    data: DataSettings
    training: dict
    screening: ScreeningSection | None = None
    peft: PeftSettings | None = None
    steering: SteeringSection | None = None
    drift: DriftSection | None = None
    wandb: WandbSettings | None = None

    def to_dict(self) -> dict:
        """The resolved recipe (after overrides, defaults filled in), as logged to W&B and saved with
        the run; :func:`recipe_from_dict` reads it back."""
        sections = {name: getattr(self, name) for name in SECTION_TYPES}
        return {**{name: to_mapping(value) for name, value in sections.items() if value is not None},
                "training": copy.deepcopy(self.training)}


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


def check_training(training: dict, where: str) -> None:
    """A recipe's ``training`` section against TRL's ``SFTConfig``: unknown fields rejected by name,
    each value checked against SFTConfig's annotation and :data:`TRAINING_BOUNDS`."""
    from trl import SFTConfig

    if not isinstance(training, dict):
        raise PersonaGuardError(f"{where}: training: expected a mapping of SFTConfig fields")
    hints = typing.get_type_hints(SFTConfig)
    known = {item.name for item in dataclasses.fields(SFTConfig) if item.init}
    unknown = sorted(str(key) for key in set(training) - known)
    if unknown:
        raise PersonaGuardError(f"{where}: training: unknown SFTConfig field(s) {', '.join(unknown)}")
    if "output_dir" not in training:
        raise PersonaGuardError(f"{where}: training.output_dir: required")
    for key, value in training.items():
        try:
            check_value(key, hints[key], value, TRAINING_BOUNDS.get(key, {}))
        except FieldError as error:
            raise PersonaGuardError(f"{where}: training.{error.key}: {error.message}") from None


def training_args(training: dict, where: str):
    """TRL's ``SFTConfig`` from a checked ``training`` section (fp32 on a machine without CUDA unless
    ``bf16`` is set); creates nothing on disk. SFTConfig's own consistency errors become one line."""
    import torch
    from trl import SFTConfig

    check_training(training, where)
    values = dict(training)
    if not torch.cuda.is_available():
        values.setdefault("bf16", False)  # SFTConfig defaults to bf16; CPU runs want fp32
    try:
        return SFTConfig(**values)
    except (TypeError, ValueError) as error:
        raise PersonaGuardError(f"{where}: training: {str(error).splitlines()[0]}") from None


def recipe_from_dict(raw: dict, where: str = "<recipe>") -> Recipe:
    """Check a whole recipe (every section, every value) without loading or creating anything."""
    if not isinstance(raw, dict):
        raise PersonaGuardError(f"{where}: expected a YAML mapping at the top level")
    unknown = sorted(str(key) for key in set(raw) - set(SECTIONS))
    if unknown:
        raise PersonaGuardError(f"{where}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if raw.get("data") is None:
        raise PersonaGuardError(f"{where}: data.train: required (a .jsonl/.parquet path, bundled:..., or hub id)")
    sections = {name: None if raw.get(name) is None else from_mapping(cls, raw[name], where, name)
                for name, cls in SECTION_TYPES.items()}
    training = raw.get("training") or {}
    check_training(training, where)
    return Recipe(path=where, training=dict(training), **{**sections, "model": sections["model"] or ModelSettings()})


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = require_file(path, "recipe")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise PersonaGuardError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
    except UnicodeDecodeError as error:
        raise PersonaGuardError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
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
