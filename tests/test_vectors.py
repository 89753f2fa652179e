import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from persona_guard.errors import PersonaGuardError
from persona_guard.models import DEFAULT_MODEL, builtin_model_dir, same_model_id
from persona_guard.vectors import (
    AGGREGATORS,
    PersonaVector,
    compute_vector,
    load_gguf_control_vector,
    mean_difference,
    pca_of_differences,
)
from tests.conftest import as_loaded


def make_vector(layers=4, d=8, default_layer=2):
    torch.manual_seed(0)
    return PersonaVector(trait="evil", model_id="tiny", directions=torch.randn(layers + 1, d),
                         default_layer=default_layer, n_pos=3, n_neg=4, metadata={"note": "x"})


def test_save_load_round_trip(tmp_path):
    vector = make_vector()
    path = vector.save(tmp_path / "evil")
    assert path.name == "evil.safetensors"
    loaded = PersonaVector.load(path)
    assert torch.equal(loaded.directions, vector.directions)
    assert loaded.metadata_dict() == vector.metadata_dict()
    assert (loaded.num_layers, loaded.hidden_size) == (4, 8)


def test_no_pickle_and_clear_errors(tmp_path):
    bad = tmp_path / "plain.safetensors"
    save_file({"directions": torch.zeros(3, 4)}, str(bad))
    with pytest.raises(PersonaGuardError, match="has no 'persona_guard' metadata"):
        PersonaVector.load(bad)
    with pytest.raises(PersonaGuardError, match="vector file not found"):
        PersonaVector.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a file")
    with pytest.raises(PersonaGuardError, match="not a persona-guard vector file"):
        PersonaVector.load(garbage)


def test_import_original_pt_is_weights_only(tmp_path):
    tensor = torch.randn(5, 8)
    torch.save(tensor, tmp_path / "evil_response_avg_diff.pt")
    vector = PersonaVector.load(tmp_path / "evil_response_avg_diff.pt")
    assert vector.trait == "evil" and torch.equal(vector.directions, tensor)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "payload.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(PersonaGuardError, match="cannot read as a tensor file"):
        PersonaVector.load(tmp_path / "payload.pt")
    torch.save(torch.randn(8), tmp_path / "flat.pt")
    with pytest.raises(PersonaGuardError, match=r"expected a \[layers, hidden\] tensor, got \(8,\)"):
        PersonaVector.load(tmp_path / "flat.pt")


def test_mismatched_model_fails_clearly(tiny_llama):
    vector = make_vector(layers=3, d=32)
    with pytest.raises(PersonaGuardError,
                       match="built for hidden size 32 and 3 layers, but model .* has hidden size 64"):
        vector.check_model(as_loaded(tiny_llama, None))
    make_vector(layers=3, d=64).check_model(as_loaded(tiny_llama, None))


def test_vector_of_another_model_warns_once_naming_both(tiny_llama, smollm_dir, tmp_path, caplog):
    """Where a vector meets a model (PersonaVector.check_model: steer, monitor, screen, eval, serve,
    select-layer), another recorded model id is one warning line naming both; ids are compared
    normalised (a hub id's case, a path written another way, the built-in name and its converted dir)
    and ``unknown`` (an imported vector) never warns."""
    directions = torch.randn(4, 64)
    (tmp_path / "model").mkdir()
    same = [("ORG/This-Model/", "org/this-model"), ("unknown", "org/this-model"),
            (str(tmp_path / "model"), f"{tmp_path}/./model/"), (DEFAULT_MODEL, str(smollm_dir))]
    with caplog.at_level(logging.WARNING, logger="persona_guard"):
        for _ in range(2):  # once per vector and model
            PersonaVector("warned", "org/other-model", directions).check_model(
                as_loaded(tiny_llama, None, "org/this-model"))
        for index, (recorded, loaded) in enumerate(same):
            PersonaVector(f"quiet{index}", recorded, directions).check_model(as_loaded(tiny_llama, None, loaded))
    warnings = [r.getMessage() for r in caplog.records if "extracted from model" in r.getMessage()]
    assert warnings == ["persona-guard: warning: the 'warned' vector was extracted from model 'org/other-model', "
                        "but the model loaded is 'org/this-model' (fine for a converted or renamed copy; "
                        "another model's directions mean nothing)"]
    assert same_model_id(DEFAULT_MODEL, str(builtin_model_dir(DEFAULT_MODEL)))
    assert not same_model_id("org/a", "org/b")


def test_projection_and_layers():
    vector = make_vector()
    hidden = torch.randn(6, 8)
    expected = hidden @ (vector.directions[2] / vector.directions[2].norm())
    torch.testing.assert_close(vector.project(hidden), expected)
    with pytest.raises(PersonaGuardError, match="layer 7 out of range 0..4"):
        vector.direction(7)
    no_default = PersonaVector("t", "m", torch.randn(3, 4))
    with pytest.raises(PersonaGuardError, match="has no default layer"):
        no_default.direction()


def test_gguf_control_vector_round_trip(tmp_path):
    import gguf

    vector = make_vector(layers=6)
    path = vector.export_gguf(tmp_path / "evil.gguf", coef=2.0)
    reader = gguf.GGUFReader(str(path))
    fields = {f.name: f for f in reader.fields.values()}
    assert "controlvector.layer_count" in fields and "controlvector.model_hint" in fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "controlvector"
    names = sorted(t.name for t in reader.tensors)
    assert names == sorted(f"direction.{l - 1}" for l in range(2, 6))  # llama.cpp block indices
    back = load_gguf_control_vector(path)
    for layer, direction in back.items():
        torch.testing.assert_close(direction, 2.0 * vector.directions[layer])
    with pytest.raises(PersonaGuardError, match="cannot steer layers below 2"):
        vector.export_gguf(tmp_path / "x.gguf", layers=[1])


def test_compute_vector_mean_difference_is_the_default():
    pos, neg = torch.ones(3, 2, 4), torch.zeros(5, 2, 4)
    assert torch.equal(compute_vector(pos, neg), torch.ones(2, 4))
    assert torch.equal(compute_vector(pos, neg), mean_difference(pos, neg))
    with pytest.raises(PersonaGuardError, match="need samples on both sides"):
        compute_vector(pos, neg[:0])
    with pytest.raises(PersonaGuardError, match="non-finite direction"):
        compute_vector(pos * float("nan"), neg)
    with pytest.raises(PersonaGuardError, match=r"\[samples, layers, hidden\]"):
        compute_vector(pos, torch.zeros(5, 3, 4))


def test_pca_of_differences_finds_the_shared_direction_in_mean_difference_units():
    """Pairs whose differences all lie along ``u`` (varying length and noise-free): the first principal
    component is ``u`` itself, signed and scaled so it equals the mean difference; with noise the
    PCA direction is still close to ``u``."""
    generator = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(2, 16, generator=generator), dim=-1)
    neg = torch.randn(40, 2, 16, generator=generator)
    lengths = torch.rand(40, 1, 1, generator=generator) + 0.5
    pos = neg + lengths * u
    torch.testing.assert_close(compute_vector(pos, neg, pca_of_differences), mean_difference(pos, neg))
    noisy = pos + 0.05 * torch.randn(pos.shape, generator=generator)
    direction = compute_vector(noisy, neg, AGGREGATORS["pca_of_differences"])
    cosine = torch.nn.functional.cosine_similarity(direction, u, dim=-1)
    assert (cosine > 0.99).all()  # signed towards the trait side
    with pytest.raises(PersonaGuardError, match="paired samples"):
        compute_vector(pos, neg[:5], pca_of_differences)


def test_metadata_is_plain_json(tmp_path):
    from safetensors import safe_open

    path = make_vector().save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["persona_guard"])
    assert meta["trait"] == "evil" and meta["default_layer"] == 2 and meta["format_version"] == 1


def test_header_that_contradicts_the_tensor_and_integer_directions_are_refused(tmp_path):
    """Found by the second hostile sweep: a header claiming another hidden size or layer count than the
    directions tensor, and integer directions (silently truncated before), are refused at load."""
    import json

    from safetensors.torch import save_file

    vector = PersonaVector("evil", "m", torch.randn(5, 8), default_layer=2)
    for name, claimed in (("hidden_size", 4096), ("num_layers", 30)):
        header = {**vector.metadata_dict(), name: claimed}
        path = tmp_path / f"{name}.safetensors"
        save_file({"directions": vector.directions}, str(path), metadata={"persona_guard": json.dumps(header)})
        with pytest.raises(PersonaGuardError, match=f"header says {name} {claimed} but the directions tensor"):
            PersonaVector.load(path)
    path = tmp_path / "int.safetensors"
    save_file({"directions": torch.ones(5, 8, dtype=torch.int32)}, str(path),
              metadata={"persona_guard": json.dumps(vector.metadata_dict())})
    with pytest.raises(PersonaGuardError, match="floating-point numbers, got torch.int32"):
        PersonaVector.load(path)
    vector.save(tmp_path / "ok.safetensors")  # the header it writes itself loads back
    assert PersonaVector.load(tmp_path / "ok.safetensors").hidden_size == 8
