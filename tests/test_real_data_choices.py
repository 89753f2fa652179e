"""The real-data benchmark's dev choices: arm names become real training recipes, and the
preventative coefficient is chosen by the declared criterion (``benchmarks/real_data.py``).
Needs no real data: the steered arms here train on bundled sets."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from persona_guard.errors import PersonaGuardError
from persona_guard.training.recipe import recipe_from_dict
from tests.test_real_data import benchmark_module

real_data = benchmark_module()
CHOICES = real_data.Choices(layers={"evil": 20, "hallucinating": 15, "sycophantic": 20})


def test_steered_arm_names_become_valid_recipes(tmp_path: Path) -> None:
    vector = tmp_path / "vectors" / "evil" / "exemplars" / "evil.safetensors"
    name = real_data.arm_name("evil/severe", "prevent-multi", 0.5)
    assert name == "evil/severe+prevent-multi@0.5"
    data, steering = real_data.arm_steering(tmp_path, CHOICES, name)
    assert data == "evil/severe"
    assert steering == {"vector": str(vector), "layers": [12, 16, 20], "coef": 0.5, "operator": "add",
                        "multi_layer": "incremental"}
    single = real_data.arm_steering(tmp_path, CHOICES, real_data.arm_name("pv_evil_II", "prevent", 2.0))
    assert single[0] == "pv_evil_II" and single[1]["layers"] == [20] and "multi_layer" not in single[1]
    assert real_data.arm_steering(tmp_path, CHOICES, "evil/severe") == ("evil/severe", None)
    raw = real_data.recipe_for(type("Args", (), {"model": "smollm2-135m", "seed": 0, "real_dir": tmp_path}),
                               tmp_path, CHOICES, "arm", real_data.TRAIN_SETS[data], steering)
    recipe = recipe_from_dict(raw, "test arm")  # the trainer's own validation accepts the section
    assert recipe.steering.coef == 0.5 and list(recipe.steering.layers) == [12, 16, 20]


@pytest.mark.parametrize("name", ["evil/nosuch", "evil/severe+prevent", "evil/severe+boost@1",
                                  "evil/severe+prevent@x", "evil/severe+prevent@-1"])
def test_bad_arm_names_are_one_clear_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(PersonaGuardError, match=r"arm .*use a training set"):
        real_data.arm_steering(tmp_path, CHOICES, name)


def test_coefficient_is_the_smallest_that_removes_the_whole_rise() -> None:
    base, unsteered = -19.0, 11.0  # the bundled severe arm's evil projection rose by 30
    projections = {0.25: 5.0, 0.5: -12.0, 1.0: -25.0, 2.0: -60.0}
    trained = []

    def removed_by(coef: float) -> float:
        trained.append(coef)
        return real_data.share_removed(base, unsteered, projections[coef])

    chosen, measured = real_data.choose_coef((2.0, 0.25, 1.0, 0.5), removed_by)
    assert chosen == 1.0 and trained == [0.25, 0.5, 1.0]  # ascending; 2 is never trained
    assert measured == pytest.approx({0.25: 0.2, 0.5: 23 / 30, 1.0: 36 / 30})
    projections = {c: 0.0 for c in projections}  # none brings it back to base: the largest
    trained.clear()
    assert real_data.choose_coef((0.25, 0.5, 1.0, 2.0), removed_by)[0] == 2.0 and trained == [0.25, 0.5, 1.0, 2.0]
    assert math.isnan(real_data.share_removed(base, base - 1, -30.0))  # no rise: nothing to remove


def test_choices_round_trip_and_default_arms_need_the_sweep(tmp_path: Path) -> None:
    path = tmp_path / "choices.json"
    real_data.write_json(path, asdict(CHOICES))
    raw = json.loads(path.read_text())
    assert raw["prevent_coef"] is None and raw["prevent_coefs"] == [0.25, 0.5, 1.0, 2.0]
    with pytest.raises(SystemExit, match="run the prevent stage"):
        real_data.default_arms(CHOICES)
    chosen = replace(CHOICES, prevent_coef={"prevent": 0.5, "prevent-multi": 1.0})
    arms = real_data.default_arms(chosen)
    assert arms[: len(real_data.TRAIN_SETS)] == list(real_data.TRAIN_SETS)
    assert arms[len(real_data.TRAIN_SETS):] == ["pv_evil_II+prevent@0.5", "pv_evil_II+prevent-multi@1"]
    for name in arms:  # every default arm name parses
        real_data.arm_steering(tmp_path, chosen, name)
