"""Sweep the demo's steering coefficients on top of a finished ``persona-guard demo`` run.

Reuses the demo's vector, its base / severe evaluation and its severe adapter; trains one more
preventative arm per ``--prevent-coefs`` value (same data, seed and steps as the demo's arms) and
evaluates it, plus the severe arm steered at inference with each ``--inference-coefs`` value.
Prints one table with the demo's targets per row: share of the severe arm's projection rise that
was removed, and benign perplexity relative to the severe arm.

    python benchmarks/demo_coefficient_sweep.py --demo runs/demo --prevent-coefs 1,2,8 --inference-coefs=-1,-2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from persona_guard.demo import DemoConfig, findings_of, train_arm
from persona_guard.training.evaluation import Arm, compare
from persona_guard.traits import load_trait
from persona_guard.vectors import PersonaVector


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="runs/demo", help="a finished demo run (its summary.json)")
    parser.add_argument("--prevent-coefs", type=floats, default=[1.0, 2.0, 8.0])
    parser.add_argument("--inference-coefs", type=floats, default=[-1.0, -2.0])
    parser.add_argument("--out", default=None, help="default: DEMO/sweep")
    args = parser.parse_args()

    demo = Path(args.demo)
    summary = json.loads((demo / "summary.json").read_text())
    config = replace(DemoConfig(**summary["config"]), out_dir=str(demo))
    out = Path(args.out or demo / "sweep")
    vector_path = summary["vector"]["path"]
    vector = PersonaVector.load(vector_path)
    by_name = {row["name"]: row for row in summary["evaluation"]}
    base, severe = by_name["base"], by_name["severe"]

    arms = []
    for coef in args.prevent_coefs:
        name = f"severe+prevent@{coef:+g}"
        trained = train_arm(replace(config, prevent_coef=coef), out, name, f"{config.trait}/severe.jsonl",
                            vector_path, prevent=True)
        arms.append(Arm(name, config.model, trained["adapter"]))
    arms += [Arm(f"severe+inference@{coef:+g}", config.model, summary["arms"]["severe"]["adapter"], coef)
             for coef in args.inference_coefs]
    results = [asdict(r) for r in compare(arms, load_trait(config.trait), vector, config.eval_settings(),
                                          out / "eval")]

    rows = [base, severe, by_name["severe+prevent"], *results]
    rise = findings_of(rows)["severe_rise"]
    print(f"\nlayer {config.layer}; base projection {base['projection']:.3g}, severe {severe['projection']:.3g} "
          f"(rise {rise:+.3g}); severe benign ppl {severe['perplexity']:.3g}\n")
    print("| arm | trait score | coherence | projection | rise removed | benign ppl / severe | MC acc |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        findings = findings_of(rows, arm=row["name"])
        removed, ratio = (float("nan") if findings[key] is None else findings[key]
                          for key in ("prevented_fraction", "perplexity_ratio"))
        print(f"| {row['name']} | {row['trait_score']:.3g} | {row['coherence']:.3g} | {row['projection']:.3g} | "
              f"{removed:.0%} | {ratio:.3f} | {row['mc_accuracy']:.3g} |")
    (out / "sweep.json").write_text(json.dumps({"demo": str(demo), "results": results}, indent=2))


if __name__ == "__main__":
    main()
