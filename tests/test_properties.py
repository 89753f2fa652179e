"""Property tests (hypothesis): trait files and vector files, whatever they hold, either load into a
valid object or raise :class:`PersonaGuardError` (one line for the CLI); nothing else escapes.

Inputs are drawn as arbitrary JSON/YAML documents, valid documents with one field replaced by
arbitrary JSON or removed, raw bytes (undecodable text included) and, for vectors, arbitrary
tensors (any shape, dtype and values, NaN and infinities included) with arbitrary or mutated
metadata headers, and valid files cut short.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from persona_guard.errors import PersonaGuardError
from persona_guard.traits import Trait, load_reference_trait, load_trait
from persona_guard.vectors import PersonaVector

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text includes lone surrogates ("\ud800" is valid JSON but cannot be written as UTF-8)
texts = st.text(st.characters(exclude_categories=()), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12)


def mutated(valid: dict) -> st.SearchStrategy[dict]:
    """``valid`` with one top-level field replaced by arbitrary JSON, or removed, or an unknown one added."""
    keys = sorted(valid)
    replace = st.tuples(st.sampled_from(keys), json_values).map(lambda kv: {**valid, kv[0]: kv[1]})
    remove = st.sampled_from(keys).map(lambda k: {key: value for key, value in valid.items() if key != k})
    add = st.tuples(st.text(min_size=1, max_size=10), json_values).map(lambda kv: {**valid, kv[0]: kv[1]})
    return replace | remove | add


def load_or_refuse(loader, *args):
    """The property: a value of the right type, or PersonaGuardError with a one-line message."""
    try:
        return loader(*args)
    except PersonaGuardError as error:
        assert "\n" not in str(error) and str(error)
        return None


# ---- trait files ---------------------------------------------------------------------------------

VALID_TRAIT = load_trait("evil").to_dict()


def write(folder: str, name: str, content: bytes | str) -> Path:
    path = Path(folder) / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


@SETTINGS
@given(document=json_values | mutated(VALID_TRAIT), suffix=st.sampled_from([".json", ".yaml"]))
def test_trait_documents_load_or_are_refused(document, suffix):
    with tempfile.TemporaryDirectory() as folder:
        text = json.dumps(document) if suffix == ".json" else yaml.safe_dump(document)
        trait = load_or_refuse(load_trait, write(folder, f"t{suffix}", text))
        if trait is not None:  # a loaded trait can be printed and saved
            assert isinstance(trait, Trait) and trait.name
            json.dumps(trait.to_dict(), ensure_ascii=False).encode("utf-8")


@SETTINGS
@given(content=st.binary(max_size=200) | st.text(max_size=200), suffix=st.sampled_from([".json", ".yaml", ".yml"]))
def test_trait_bytes_load_or_are_refused(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        load_or_refuse(load_trait, write(folder, f"t{suffix}", content))


PAPER = {"instruction": [{"pos": p.pos, "neg": p.neg} for p in load_trait("evil").instructions],
         "questions": list(load_trait("evil").eval_questions), "eval_prompt": VALID_TRAIT["judge_rubric"]}


@SETTINGS
@given(extract=json_values | mutated(PAPER), evaluation=json_values | mutated(PAPER))
def test_paper_format_pairs_load_or_are_refused(extract, evaluation):
    with tempfile.TemporaryDirectory() as folder:
        load_or_refuse(load_reference_trait, write(folder, "extract.json", json.dumps(extract)),
                       write(folder, "eval.json", json.dumps(evaluation)))


# ---- vector files --------------------------------------------------------------------------------

VALID_HEADER = PersonaVector("evil", "tiny", torch.ones(4, 8), default_layer=2).metadata_dict()
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.bool]
special_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def tensors(draw) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    count = math.prod(shape)
    values = draw(st.lists(special_floats | st.integers(-3, 3).map(float), min_size=count, max_size=count))
    tensor = torch.tensor(values, dtype=torch.float32).reshape(shape)
    dtype = draw(st.sampled_from(DTYPES))
    return tensor.to(dtype) if dtype != torch.bool else tensor > 0


headers = (st.none() | st.text(max_size=60) | json_values.map(json.dumps)
           | mutated(VALID_HEADER).map(json.dumps))


def check_vector(vector) -> None:
    if vector is not None:
        assert isinstance(vector, PersonaVector) and bool(torch.isfinite(vector.directions).all())
        assert vector.directions.shape[0] >= 2
        assert vector.default_layer is None or 0 <= vector.default_layer <= vector.num_layers
        json.dumps(vector.metadata_dict(), ensure_ascii=False).encode("utf-8")  # printable, savable


@SETTINGS
@given(directions=tensors(), header=headers, name=st.sampled_from(["directions", "other"]))
def test_vector_files_load_or_are_refused(directions, header, name):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.safetensors"
        save_file({name: directions.contiguous()}, str(path),
                  metadata=None if header is None else {"persona_guard": header})
        check_vector(load_or_refuse(PersonaVector.load, path))


@SETTINGS
@given(directions=tensors())
def test_paper_pt_files_load_or_are_refused(directions):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "evil.pt"
        torch.save(directions, path)
        check_vector(load_or_refuse(PersonaVector.load, path))


@SETTINGS
@given(cut=st.integers(0, 400), garbage=st.binary(max_size=64), suffix=st.sampled_from([".safetensors", ".pt"]))
def test_damaged_vector_bytes_load_or_are_refused(cut, garbage, suffix):
    """A valid file cut short, with arbitrary bytes appended (a torn or corrupted download)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"v{suffix}"
        if suffix == ".pt":
            torch.save(torch.ones(4, 8), path)
        else:
            PersonaVector("evil", "tiny", torch.ones(4, 8), default_layer=2).save(path)
        data = path.read_bytes()
        path.write_bytes(data[:cut] + garbage)
        check_vector(load_or_refuse(PersonaVector.load, path))
