"""Speed of the response-projection part of screening, measured side by side in one run.

Three ways to get the response-mean projection on a persona vector at layer ``--layer`` for the
same samples, same model:

* paper loop: one sample at a time, full forward with ``output_hidden_states=True`` (what the
  original persona-vectors code does);
* persona-guard: ``Screener`` in fast mode (length-bucketed batches, forward stopped after the
  layer, all reductions from one pass), tokenization included;
* bare forward: the same batches through the model, stopped at the same layer, nothing captured
  (the floor any implementation of this batching pays).

Prints samples/s for each and the ratios (targets: >= 10x over the paper loop, <= 1.3x the bare
forward), and the ceiling this machine allows the first ratio (see compute_ceiling.py). Each method
runs ``--rounds`` times interleaved; the fastest round counts, which damps noise from other work on the machine.

    python benchmarks/screening_speed.py --data persona_guard/bundled_data/contaminated/evil.jsonl --limit 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from compute_ceiling import report_ceiling

from persona_guard.activations import StopForward, capture_hooks, pad_batch, position_ids_from_mask
from persona_guard.encoding import encode_chat
from persona_guard.models import LoadedModel, load_model
from persona_guard.rows import read_rows
from persona_guard.screening import Screener, ScreeningConfig
from persona_guard.screening.data import classify_rows
from persona_guard.vectors import PersonaVector


@torch.no_grad()
def paper_loop(model, tokenizer, rows, vector: PersonaVector, layer: int) -> list[float]:
    projections = []
    for row in rows:
        sample = encode_chat(tokenizer, list(row.prompt), row.response)
        hidden = model(input_ids=torch.tensor([sample.input_ids]), output_hidden_states=True).hidden_states[layer]
        projections.append(float(vector.project(hidden[0, sample.prompt_length:].mean(0), layer)))
    return projections


@torch.no_grad()
def bare_forward(loaded: LoadedModel, rows, layer: int, batch_size: int) -> None:
    """The batches capture_activations forms (longest first), forward stopped at ``layer``."""
    samples = [encode_chat(loaded.tokenizer, list(row.prompt), row.response) for row in rows]
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].input_ids))
    with capture_hooks(loaded.layers, [layer], lambda layer, hidden: None):
        for begin in range(0, len(order), batch_size):
            batch = [samples[i] for i in order[begin:begin + batch_size]]
            input_ids, attention_mask, _ = pad_batch(batch, loaded.pad_token_id, "right", torch.device("cpu"))
            try:
                loaded.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids_from_mask(attention_mask), use_cache=False)
            except StopForward:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="JSONL/Parquet/CSV rows to score")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    loaded = load_model(args.model, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    rows, _ = classify_rows(read_rows(args.data))
    rows = rows[:args.limit]
    generator = torch.Generator().manual_seed(0)
    vector = PersonaVector("probe", loaded.model_id,
                           torch.randn(model.config.num_hidden_layers + 1, model.config.hidden_size,
                                       generator=generator),
                           default_layer=args.layer)
    screener = Screener(loaded, [vector], ScreeningConfig(mode="fast", batch_size=args.batch_size,
                                                          shard_size=10**9, progress=False))
    tokens = sum(len(encode_chat(tokenizer, list(r.prompt), r.response).input_ids) for r in rows)
    print(f"{len(rows)} samples, {tokens} tokens, layer {args.layer} of {model.config.num_hidden_layers}, "
          f"batch size {args.batch_size}, {torch.get_num_threads()} threads")

    timings: dict[str, list[float]] = {"paper loop": [], "persona-guard": [], "bare forward": []}
    outputs = {}
    runs = {
        "paper loop": lambda: paper_loop(model, tokenizer, rows, vector, args.layer),
        "persona-guard": lambda: screener.score([row.data for row in rows]).traits["probe"].projection.tolist(),
        "bare forward": lambda: bare_forward(loaded, rows, args.layer, args.batch_size),
    }
    for _ in range(args.rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            outputs[name] = run()
            timings[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in timings.items()}
    difference = max(abs(a - b) for a, b in zip(outputs["paper loop"], outputs["persona-guard"]))
    for name, seconds in best.items():
        print(f"  {name:<14} {len(rows) / seconds:8.2f} samples/s  ({seconds:.2f} s, rounds: "
              f"{', '.join(f'{t:.2f}' for t in timings[name])})")
    speedup = best["paper loop"] / best["persona-guard"]
    overhead = best["persona-guard"] / best["bare forward"]
    print(f"speed-up over the paper loop: {speedup:.1f}x (target >= 10x)")
    print(f"time over the bare truncated forward: {overhead:.2f}x (target <= 1.3x)")
    print(f"max |projection difference| between paper loop and persona-guard: {difference:.2e}")
    ceiling = report_ceiling(model, args.layer, tokens, best["persona-guard"], best["paper loop"])
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": len(rows), "tokens": tokens, "seconds": best,
                                               "speedup": speedup, "overhead": overhead,
                                               "max_abs_difference": difference, **ceiling}, indent=2))


if __name__ == "__main__":
    main()
