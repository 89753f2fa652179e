"""Activation capture speed: persona-guard vs the original persona-vectors loop, same run.

persona-guard: one layer, ``response_mean``, length-bucketed batches, forward stopped after the
layer. Original pattern: one sample at a time, full forward with ``output_hidden_states=True``,
then the mean over response tokens of the chosen layer. Both see the same 64 chat samples of
~200 tokens on the embedded SmolLM2; the results are checked to agree before timing is reported.

    python benchmarks/activation_capture.py [--samples 64] [--layer 15] [--batch-size 16] [--dtype bfloat16]

It also prints where the speed-up comes from (persona-guard at batch 1 = truncation alone) and the
ceiling this machine allows (see compute_ceiling.py). Measured on this project's 2-core CPU (fp32),
five runs: 2.6x-3.3x, against a ceiling of 3.6x-4.2x (work ratio 2.53).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from compute_ceiling import report_ceiling

from persona_guard.activations import capture_activations
from persona_guard.encoding import encode_chat
from persona_guard.models import DEFAULT_MODEL, load_model

WORDS = ("the model answers questions about gardens rivers budgets code history music travel "
         "cooking health science weather sports books friends cities markets energy planets").split()


def make_samples(tokenizer, n: int, seed: int = 0):
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        question = " ".join(rng.choices(WORDS, k=rng.randint(8, 20))) + "?"
        answer = " ".join(rng.choices(WORDS, k=rng.randint(120, 190))) + "."
        samples.append(encode_chat(tokenizer, [{"role": "user", "content": f"Q{i}: {question}"}], answer))
    return samples


@torch.no_grad()
def original_loop(model, samples, layer: int) -> torch.Tensor:
    rows = []
    for sample in samples:
        ids = torch.tensor([sample.input_ids])
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
        rows.append(hidden[sample.prompt_length:].mean(0))
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="both sides (default: fp32 on CPU); bfloat16 pays off on "
                                                      "CPUs with avx512_bf16 / AMX")
    args = parser.parse_args()

    loaded = load_model(args.model, device="cpu", dtype=args.dtype)
    samples = make_samples(loaded.tokenizer, args.samples)
    tokens = sum(len(s.input_ids) for s in samples)
    print(f"{len(samples)} samples, {tokens / len(samples):.0f} tokens each on average, layer {args.layer}, "
          f"torch threads {torch.get_num_threads()}")
    capture_activations(loaded, samples[:2], [args.layer], progress=False)  # warm-up

    start = time.perf_counter()
    ours = capture_activations(loaded, samples, [args.layer], ("response_mean",), batch_size=args.batch_size,
                               progress=False)["response_mean"][:, 0]
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = original_loop(loaded.model, samples, args.layer)
    original_s = time.perf_counter() - start

    start = time.perf_counter()
    capture_activations(loaded, samples, [args.layer], ("response_mean",), batch_size=1, progress=False)
    batch_one_s = time.perf_counter() - start

    max_error = (ours - reference).abs().max().item()
    print(f"max abs difference between the two: {max_error:.2e}")
    assert max_error < (1e-3 if args.dtype in (None, "float32") else 0.5), "results disagree"
    print(f"persona-guard : {ours_s:7.2f} s  ({tokens / ours_s:7.0f} tok/s)")
    print(f"original loop : {original_s:7.2f} s  ({tokens / original_s:7.0f} tok/s)")
    print(f"speed-up      : {original_s / ours_s:.2f}x")
    print(f"persona-guard at batch 1 (truncation alone): {original_s / batch_one_s:.2f}x; batching adds "
          f"{batch_one_s / ours_s:.2f}x")
    report_ceiling(loaded.model, args.layer, tokens, ours_s, original_s)


if __name__ == "__main__":
    main()
