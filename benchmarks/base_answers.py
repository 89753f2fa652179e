"""Base-answer generation speed (transformers backend), measured side by side in one run.

Prints, for the embedded model (or ``--model``) and real prompts (the unique user turns of
``--data``):

* the decode compute ceiling: matmul FLOPs per generated token (weights and LM head, plus
  attention over the average context) against the rate of one large matmul (compute_ceiling.py),
  and against the rate of the model's own weight matmuls on the side-by-side's 64 rows;
* where the time of one batch goes, for today's path (``generate``, batch 16) and the new one:
  prefill, decode, padding waste (padded prompt positions, rows decoded after their EOS) and
  Python overhead (wall time outside aten ops, from torch.profiler);
* tokens/s of the new path by rows per batch and by prompt length (shorter / longer half), and
  (``--budgets``) by KV budget on more prompts, in fp32 and bf16;
* side by side on ``--prompts`` x ``--max-new-tokens``: today's path (``generate_responses``,
  batch 16), ``generate`` at batch 64 with a dynamic and with a static KV cache, the new path
  (``transformers_backend``: KV budget batches, finished rows leave, preallocated cache, shared
  prompt prefix computed once), and the
  new path generating in bfloat16 (``--generation-dtype bfloat16``; its own ceiling is printed, from
  a bf16 large matmul), with how many answers equal today's.

Tokens/s counts generated tokens up to and including EOS (as a serving engine reports them).

    python benchmarks/base_answers.py --data ../shared/real_data/pv_evil_II.jsonl --prompts 64 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from compute_ceiling import large_matmul_gflops, matmul_work_per_token

from persona_guard.encoding import render_prompt
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.models import decoder_layers, eos_token_ids, load_model
from persona_guard.rows import read_rows
from persona_guard.screening import BaseAnswerSettings
from persona_guard.screening.base_answers import transformers_backend
from persona_guard.screening.data import classify_rows
from persona_guard.screening.fast_generate import greedy_generate, kv_token_budget, plan_batches


def unique_prompts(path: str, count: int) -> list[list[dict]]:
    prompts: list[list[dict]] = []
    for row in classify_rows(read_rows(path))[0]:
        prompt = list(row.prompt)
        if prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == count:
            break
    return prompts


def decode_ceiling(model, context: float, dtype: torch.dtype) -> tuple[float, float, float]:
    """(GFLOP per generated token, large-matmul GFLOP/s in ``dtype``, tokens/s if every FLOP ran at
    that rate)."""
    layers = model.config.num_hidden_layers
    _, weights = matmul_work_per_token(model, layers)
    attention = 2 * layers * model.config.hidden_size * context  # q.k and p.v over the context
    gflop = 2 * (weights + attention) / 1e9
    rate = large_matmul_gflops(dtype)
    return gflop, rate, rate / gflop


@torch.no_grad()
def weight_matmul_gflops(model, rows: int, rounds: int = 3) -> float:
    """GFLOP/s of the model's own weight matmuls (every 2-D weight of the decoder layers, then the LM
    head, in forward order) on ``rows`` input rows: the most a decode step of that many rows can
    reach, with each weight coming from memory as in the model (together they overflow the caches).
    Best of ``rounds``."""
    weights = [p for block in decoder_layers(model) for p in block.parameters() if p.dim() == 2]
    weights.append(model.get_output_embeddings().weight)
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights}
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for weight in weights:
            torch.nn.functional.linear(inputs[weight.shape[1]], weight)
        best = min(best, time.perf_counter() - start)
    return 2 * rows * sum(w.numel() for w in weights) / best / 1e9


class ForwardTimer:
    """Wall time of each model forward (the first one of a batch is the prefill)."""

    def __init__(self, model) -> None:
        self.model, self.times = model, []

    def __enter__(self):
        self.handles = [self.model.register_forward_pre_hook(lambda *_: self.times.append([time.perf_counter()])),
                        self.model.register_forward_hook(lambda *_: self.times[-1].append(time.perf_counter()))]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


class TokenCounter:
    """Tokens the new path generates while it is entered: each forward of ``greedy_generate`` yields one
    token per row it is given (finished rows have left the batch), so the rows summed over forwards
    count the tokens up to and including EOS, with no second generation to count them."""

    def __init__(self, model) -> None:
        self.model, self.tokens = model, 0

    def __enter__(self):
        def count(_module, args, kwargs):
            self.tokens += (kwargs["input_ids"] if "input_ids" in kwargs else args[0]).shape[0]
        self.tokens = 0
        self.handle = self.model.register_forward_pre_hook(count, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def breakdown(name: str, run, prompt_ids: list[list[int]], answers: list[list[int]], max_new_tokens: int,
              rows_per_batch: list[int]) -> None:
    """Profile ``run()`` (one batch or more) and print the shares of its wall time."""
    from torch.profiler import ProfilerActivity, profile

    with ForwardTimer(run.model) as timer, profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    ops = sum(e.self_cpu_time_total for e in profiler.key_averages() if e.key.startswith("aten::")) / 1e6
    forwards = [end - begin for begin, end in timer.times]
    prefill_calls = len(rows_per_batch)
    # prefill: the first forward of each batch; with one batch that is forwards[0]
    prefill = sum(sorted(forwards, reverse=True)[:prefill_calls])
    decode = sum(forwards) - prefill
    widths, pad_positions, real_positions, dead_steps, row_steps, start_row = [], 0, 0, 0, 0, 0
    for rows in rows_per_batch:
        batch = range(start_row, start_row + rows)
        width = max(len(prompt_ids[i]) for i in batch)
        widths.append(width)
        pad_positions += sum(width - len(prompt_ids[i]) for i in batch)
        real_positions += sum(len(prompt_ids[i]) for i in batch)
        steps = max(len(answers[i]) for i in batch) if name != "today" else max_new_tokens
        row_steps += rows * steps
        dead_steps += sum(steps - len(answers[i]) for i in batch)
        start_row += rows
    waste = prefill * pad_positions / (pad_positions + real_positions) + decode * dead_steps / row_steps
    print(f"  {name}: wall {wall:.2f}s = prefill {prefill / wall:.0%}, decode {decode / wall:.0%}, outside the "
          f"forward {(wall - prefill - decode) / wall:.0%}; padding waste {waste / wall:.0%} of wall "
          f"({pad_positions} padded prompt positions, {dead_steps} of {row_steps} row-steps after EOS); "
          f"Python overhead (wall outside aten ops) {max(0.0, wall - ops) / wall:.0%}")


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="../shared/real_data/pv_evil_II.jsonl")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sweep-tokens", type=int, default=32, help="new tokens in the batch-size sweep")
    parser.add_argument("--profile-tokens", type=int, default=32, help="new tokens in the profiled batch")
    parser.add_argument("--sweep-rows", default="8,16,32,64,128")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--budgets", default="", help="KV budgets to compare, in rows of 256 positions "
                        "(e.g. 64,128,256), on --budget-prompts prompts x --max-new-tokens, fp32 and bf16")
    parser.add_argument("--budget-prompts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the side-by-side run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = unique_prompts(args.data, args.prompts)
    prompt_ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    eos, pad = eos_token_ids(model, tokenizer), tokenizer.pad_token_id or 0
    lengths = sorted(map(len, prompt_ids))
    print(f"{loaded.model_id}, {len(prompts)} unique prompts of {args.data} ({lengths[0]}-{lengths[-1]} tokens, "
          f"median {statistics.median(lengths):.0f}), fp32, {torch.get_num_threads()} threads")

    context = statistics.mean(lengths) + args.max_new_tokens / 2
    gflop, rate, ceiling = decode_ceiling(model, context, torch.float32)
    print(f"decode ceiling: {gflop:.3f} GFLOP per generated token x one large matmul's {rate:.0f} GFLOP/s "
          f"= {ceiling:.0f} tokens/s")
    _, bf16_rate, bf16_ceiling = decode_ceiling(model, context, torch.bfloat16)
    # what --generation-dtype bfloat16 makes once per run (transformers_backend's copy), made before any timing
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    print(f"decode ceiling in bfloat16: one large bf16 matmul's {bf16_rate:.0f} GFLOP/s = {bf16_ceiling:.0f} tokens/s")
    rows = min(64, len(prompts))  # the side-by-side's batch
    rows_rates = {name: weight_matmul_gflops(m, rows)
                  for name, m in (("fp32", model), ("bf16", bf16_model))}
    print(f"at {rows} rows the model's own weight matmuls run at {rows_rates['fp32']:.0f} GFLOP/s in fp32 and "
          f"{rows_rates['bf16']:.0f} in bf16 (weights from memory): {rows_rates['fp32'] / gflop:.0f} and "
          f"{rows_rates['bf16'] / gflop:.0f} tokens/s with nothing else to compute")

    sample = list(range(min(16, len(prompts))))
    steps = args.profile_tokens
    print(f"where the time goes ({len(sample)} prompts x {steps} new tokens, one batch, under torch.profiler):")
    first = [prompts[i] for i in sample]
    first_ids = [prompt_ids[i] for i in sample]
    first_answers = greedy_generate(model, first_ids, steps, eos, pad, token_budget=10**9)

    def today():
        generate_responses(model, tokenizer, first, GenerationConfig(max_new_tokens=steps, batch_size=16),
                           progress=False)

    def new():
        greedy_generate(model, first_ids, steps, eos, pad, token_budget=10**9)
    order = sorted(range(len(sample)), key=lambda i: -len(first_ids[i]))
    sorted_ids = [first_ids[i] for i in order]
    sorted_answers = [first_answers[i] for i in order]
    for name, fn in (("today", today), ("new", new)):
        fn.model = model
        breakdown(name, fn, sorted_ids, sorted_answers, steps, [len(sample)])

    if not args.skip_sweep:
        print(f"new path, tokens/s by rows per batch ({args.sweep_tokens} new tokens):")
        for rows in map(int, args.sweep_rows.split(",")):
            count = min(rows, len(prompt_ids))
            seconds, out = timed(lambda count=count: greedy_generate(model, prompt_ids[:count], args.sweep_tokens,
                                                                     eos, pad, token_budget=10**9))
            print(f"  {count:4d} rows: {sum(map(len, out)) / seconds:6.0f} tokens/s")
        half = len(prompt_ids) // 2
        by_length = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        for label, part in (("shorter half", by_length[:half]), ("longer half", by_length[half:])):
            ids = [prompt_ids[i] for i in part]
            seconds, out = timed(lambda ids=ids: greedy_generate(model, ids, args.sweep_tokens, eos, pad,
                                                                 token_budget=10**9))
            print(f"  {label} ({min(map(len, ids))}-{max(map(len, ids))} prompt tokens, {len(ids)} rows): "
                  f"{sum(map(len, out)) / seconds:6.0f} tokens/s")

    if args.budgets:
        budget_ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
                      for p in unique_prompts(args.data, args.budget_prompts)]
        print(f"new path, tokens/s by KV budget ({len(budget_ids)} prompts x {args.max_new_tokens} new tokens):")
        for rows in map(int, args.budgets.split(",")):
            plan = plan_batches(list(map(len, budget_ids)), args.max_new_tokens, rows * 256)
            rates = []
            for dtype_model in (model, bf16_model):
                seconds, out = timed(lambda m=dtype_model, budget=rows * 256: greedy_generate(
                    m, budget_ids, args.max_new_tokens, eos, pad, token_budget=budget))
                rates.append(sum(map(len, out)) / seconds)
            print(f"  {rows:4d} x 256 positions (batches of {'/'.join(str(len(b)) for b in plan)} rows): "
                  f"fp32 {rates[0]:5.0f} tokens/s, bf16 {rates[1]:5.0f} tokens/s")

    n = args.max_new_tokens
    print(f"side by side: {len(prompts)} prompts x {n} new tokens (KV budget {kv_token_budget(model)} positions)")
    settings = BaseAnswerSettings(max_new_tokens=n)
    backend = transformers_backend(model, tokenizer)
    bf16_backend = transformers_backend(bf16_model, tokenizer)

    def generate_64(cache: str):
        for begin in range(0, len(prompt_ids), 64):
            batch = tokenizer.pad({"input_ids": prompt_ids[begin:begin + 64]}, padding_side="left", return_tensors="pt")
            model.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=pad,
                           **({"cache_implementation": "static"} if cache == "static" else {}))
    counters = {"new path": TokenCounter(model), "new path, bfloat16 answers": TokenCounter(bf16_model)}
    methods = {
        "today: generate, batch 16": lambda: generate_responses(
            model, tokenizer, prompts, GenerationConfig(max_new_tokens=n, batch_size=16), progress=False),
        "new path": lambda: backend(prompts, settings, 0),
        "new path, bfloat16 answers": lambda: bf16_backend(prompts, settings, 0),
        "generate, batch 64, dynamic KV cache": lambda: generate_64("dynamic"),
        "generate, batch 64, static KV cache": lambda: generate_64("static"),
    }
    best = {name: float("inf") for name in methods}
    outputs, counted = {}, {}
    for _ in range(args.rounds):  # interleaved, fastest round counts: damps drift in the machine's load
        for name, method in methods.items():
            if name in counters:
                with counters[name] as counter:
                    seconds, outputs[name] = timed(method)
                counted[name] = counter.tokens
            else:
                seconds, outputs[name] = timed(method)
            best[name] = min(best[name], seconds)
    # generate decodes finished rows on as padding: its token count is that of the same (fp32) answers
    tokens, bf16_tokens = counted["new path"], counted["new path, bfloat16 answers"]
    today_seconds, new_seconds = best["today: generate, batch 16"], best["new path"]
    for name, seconds in best.items():
        count = bf16_tokens if "bfloat16" in name else tokens
        of_bf16 = f" ({count / seconds / bf16_ceiling:.0%} of the bf16 ceiling)" if "bfloat16" in name else ""
        print(f"  {name:38s} {seconds:7.1f}s {count / seconds:7.0f} tokens/s  {today_seconds / seconds:5.2f}x today"
              f"  {count / seconds / ceiling:4.0%} of the ceiling{of_bf16}")
    today_answers = outputs["today: generate, batch 16"]
    same = {name: sum(a == b for a, b in zip(outputs[name], today_answers))
            for name in ("new path", "new path, bfloat16 answers")}
    print(f"  {tokens} tokens generated ({tokens / len(prompts):.0f} per answer); answers equal to today's: new path "
          f"{same['new path']}/{len(prompts)}, bfloat16 {same['new path, bfloat16 answers']}/{len(prompts)} "
          "(bf16 rounding changes greedy picks: a different answer, not a wrong one)")
    print(json.dumps({"ceiling_tokens_per_s": round(ceiling), "bf16_ceiling_tokens_per_s": round(bf16_ceiling),
                      "rows_ceiling_tokens_per_s": round(rows_rates["fp32"] / gflop),
                      "rows_bf16_ceiling_tokens_per_s": round(rows_rates["bf16"] / gflop),
                      "today_tokens_per_s": round(tokens / today_seconds),
                      "new_tokens_per_s": round(tokens / new_seconds),
                      "new_bf16_tokens_per_s": round(bf16_tokens / best["new path, bfloat16 answers"]),
                      "speedup": round(today_seconds / new_seconds, 2),
                      "speedup_bf16": round(today_seconds / best["new path, bfloat16 answers"], 2)}))


if __name__ == "__main__":
    main()
