"""llama.cpp (through llama-cpp-python) against the transformers base-answer path, side by side.

Issue 13 asks for a llama.cpp backend for GGUF models only if it decodes at least 3x faster than the
fastest transformers path on this CPU. This measures it on the embedded GGUF (SmolLM2-135M-Instruct,
Q4_1) and real prompts: batched greedy decoding through llama.cpp's low-level API (one sequence per
prompt in one context, ``llama_decode`` over all live sequences per step, argmax of each row's
logits, finished sequences leave the batch) against ``transformers_backend`` in the model's float32
and in bfloat16 (``--generation-dtype bfloat16``), all on the same prompt token ids.

llama-cpp-python is not a dependency of persona-guard (the backend was left out on this
measurement); install it to run this: ``pip install llama-cpp-python`` (a source build: about 13
minutes on 2 cores).

    python benchmarks/llama_cpp_decode.py --prompts 64 --max-new-tokens 128 --rows 16,64
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from persona_guard.encoding import render_prompt
from persona_guard.models import builtin_gguf_path, eos_token_ids, load_model
from persona_guard.screening import BaseAnswerSettings
from persona_guard.screening.base_answers import transformers_backend


def decode(llama_cpp, context, batch, entries: list[tuple[int, int, int, bool]]) -> None:
    """One ``llama_decode`` over ``entries`` of (token, position, sequence, wants logits)."""
    batch.n_tokens = len(entries)
    for i, (token, position, sequence, logits) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
        batch.seq_id[i][0], batch.logits[i] = sequence, logits
    if llama_cpp.llama_decode(context, batch) != 0:
        raise RuntimeError("llama_decode failed")


def llama_greedy(llama_cpp, model, prompts: list[list[int]], max_new_tokens: int, eos: set[int], rows: int,
                 threads: int) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token ids), ``rows`` sequences per llama.cpp context."""
    vocab_size = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    out: list[list[int]] = []
    for begin in range(0, len(prompts), rows):
        chunk = prompts[begin:begin + rows]
        params = llama_cpp.llama_context_default_params()
        params.n_seq_max = len(chunk)
        params.kv_unified = False  # one KV stream per sequence: attention never spans other rows
        params.n_ctx = len(chunk) * (max(map(len, chunk)) + max_new_tokens + 1)
        params.n_batch = max(512, sum(map(len, chunk)))
        params.n_threads = params.n_threads_batch = threads
        context = llama_cpp.llama_init_from_model(model, params)
        batch = llama_cpp.llama_batch_init(params.n_batch, 0, len(chunk))
        try:
            prefill = [(t, i, s, i == len(p) - 1) for s, p in enumerate(chunk) for i, t in enumerate(p)]
            decode(llama_cpp, context, batch, prefill)
            rows_at = list(np.cumsum([len(p) for p in chunk]) - 1)  # batch index of each live row's logits
            live, generated = list(range(len(chunk))), [[] for _ in chunk]
            for step in range(max_new_tokens):
                picks = {}
                for index, sequence in zip(rows_at, live):
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(context, int(index)),
                                                   shape=(vocab_size,))
                    picks[sequence] = int(logits.argmax())
                    generated[sequence].append(picks[sequence])
                live = [s for s in live if picks[s] not in eos]
                if not live or step == max_new_tokens - 1:
                    break
                decode(llama_cpp, context, batch, [(picks[s], len(chunk[s]) + step, s, True) for s in live])
                rows_at = list(range(len(live)))
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(context)
        out.extend(generated)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/real_data/pv_evil_II.jsonl")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rows", default="16,64", help="llama.cpp sequences per context (comma-separated)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("this benchmark needs llama-cpp-python: pip install llama-cpp-python") from None
    from base_answers import unique_prompts  # benchmarks/base_answers.py

    loaded = load_model("smollm2-135m", device="cpu")
    tokenizer = loaded.tokenizer
    prompts = unique_prompts(args.data, args.prompts)
    ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    eos = set(eos_token_ids(loaded.model, tokenizer))
    gguf = builtin_gguf_path("smollm2-135m")
    llama_cpp.llama_backend_init()
    quiet = llama_cpp.llama_log_callback(lambda *_: None)  # its per-context log is long; kept referenced
    llama_cpp.llama_log_set(quiet, None)
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), llama_cpp.llama_model_default_params())
    print(f"{len(prompts)} prompts of {args.data} x {args.max_new_tokens} new tokens, {args.threads} threads; "
          f"llama.cpp {llama_cpp.__version__} on {gguf.name}")

    backend = transformers_backend(loaded.model, tokenizer)
    results: dict[str, float] = {}
    reference = None
    for dtype in (None, "bfloat16"):
        settings = BaseAnswerSettings(max_new_tokens=args.max_new_tokens, dtype=dtype)
        backend(prompts[:2], settings, 0)  # the bf16 copy is made outside the timing
        start = time.perf_counter()
        texts = backend(prompts, settings, 0)
        seconds = time.perf_counter() - start
        count = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        results[f"transformers new path, {dtype or 'float32'}"] = count / seconds
        reference = reference or texts
    for rows in map(int, args.rows.split(",")):
        start = time.perf_counter()
        out = llama_greedy(llama_cpp, model, ids, args.max_new_tokens, eos, rows, args.threads)
        seconds = time.perf_counter() - start
        results[f"llama.cpp Q4_1, {rows} sequences per context"] = sum(map(len, out)) / seconds
        same = sum(tokenizer.decode(o, skip_special_tokens=True).strip() == r for o, r in zip(out, reference))
        print(f"  llama.cpp answers equal to transformers float32's: {same}/{len(out)} ({rows} per context)")
    best_transformers = max(v for k, v in results.items() if k.startswith("transformers"))
    for name, rate in results.items():
        print(f"  {name:45s} {rate:7.0f} tokens/s  {rate / best_transformers:5.2f}x the fastest transformers path")
    best_llama = max(v for k, v in results.items() if k.startswith("llama"))
    verdict = "meets" if best_llama >= 3 * best_transformers else "misses"
    print(f"llama.cpp {verdict} the 3x bar: {best_llama / best_transformers:.2f}x")
    print(json.dumps({k: round(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
