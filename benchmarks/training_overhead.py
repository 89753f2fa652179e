"""Training-step time with and without preventative steering: same model, same batches, one run.

Steered and plain steps alternate (ABAB...) on the same fixed batches so machine load drifts
affect both equally; the overhead is the median of the paired differences over the median plain
step. Each step is a real LoRA training step: forward, backward, optimizer step.

    python benchmarks/training_overhead.py                      # SmolLM2-135M, LoRA, CPU
    python benchmarks/training_overhead.py --layers 5 10 15 20  # multi-layer (incremental)
    python benchmarks/training_overhead.py --model Qwen/Qwen2.5-7B-Instruct --batch-size 2 --seq-len 1024
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's packages first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, nargs="+", default=[15])
    parser.add_argument("--coef", type=float, default=4.0)
    parser.add_argument("--operator", choices=("add", "ablate"), default="add")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="steered/plain step pairs (after one warm-up pair)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from peft import LoraConfig, get_peft_model

    from persona_guard.models import load_model, model_device
    from persona_guard.training.steering_callback import PreventativeSteeringCallback
    from persona_guard.vectors import PersonaVector

    loaded = load_model(args.model)
    model = loaded.model
    config = model.config
    if not args.full:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, use_rslora=True, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    device = model_device(model)
    generator = torch.Generator().manual_seed(0)
    # A random direction of realistic size: steering cost does not depend on what the vector means.
    directions = torch.randn(loaded.num_layers + 1, config.hidden_size, generator=generator)
    vector = PersonaVector("benchmark", args.model, directions, default_layer=args.layers[0])
    callback = PreventativeSteeringCallback(vector, layers=args.layers, coef=args.coef, operator=args.operator)
    batches = [torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), generator=generator).to(device)
               for _ in range(2)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    # On a shared CPU, wall time mostly measures the neighbours; this process's CPU time measures
    # the work. On GPUs, synchronised wall time is the right clock.
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def step(ids: torch.Tensor) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    times: dict[str, list[float]] = {"plain": [], "steered": []}
    for round_index in tqdm(range(args.rounds + 1), desc="step pairs"):
        ids = batches[round_index % len(batches)]
        # Alternate which arm goes first so neither always runs on a warmer cache.
        order = ("steered", "plain") if round_index % 2 else ("plain", "steered")
        for arm in order:
            if arm == "steered":
                callback.attach(model)
            try:
                elapsed = step(ids)
            finally:
                callback.remove()
            if round_index > 0:  # the first pair warms up allocators and kernels
                times[arm].append(elapsed)

    # The same edit in isolation: forward + backward of what one steered layer adds, on a tensor
    # of the residual stream's shape. Far less sensitive to a busy machine than the A/B above.
    from persona_guard.steering import steering_delta

    hidden = torch.randn(args.batch_size, args.seq_len, config.hidden_size, device=device, requires_grad=True)
    direction = directions[args.layers[0]].to(device)
    repeats = 50
    start = clock()
    for _ in range(repeats):
        (hidden + steering_delta(hidden, direction, args.coef, args.operator)).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    hook_cost = (clock() - start) / repeats * len(args.layers)

    plain = statistics.median(times["plain"])
    steered = statistics.median(times["steered"])
    paired = statistics.median(s - p for s, p in zip(times["steered"], times["plain"]))
    tokens = args.batch_size * args.seq_len
    mode = "full" if args.full else "LoRA r=16"
    clock_name = "wall time" if device.type == "cuda" else "process CPU time"
    print(f"model {args.model} ({mode}), {device} ({clock_name}), {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}x"
          f"{args.seq_len}, steering {args.operator} at layers {args.layers}, {args.rounds} step pairs")
    print(f"plain step    median {plain:.3f} s  ({tokens / plain:.0f} tok/s)")
    print(f"steered step  median {steered:.3f} s  ({tokens / steered:.0f} tok/s)")
    print(f"overhead      {100 * paired / plain:+.2f} % (median paired difference {1000 * paired:+.1f} ms; "
          f"target <= 2 %)")
    print(f"hook alone    {1000 * hook_cost:.2f} ms per step = {100 * hook_cost / plain:.2f} % of the plain step "
          f"(upper bound: the timing includes a sum and its backward)")


if __name__ == "__main__":
    main()
