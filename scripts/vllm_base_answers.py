"""Base answers for ``persona-guard screen --base-answers``, made by a vLLM offline batch job.

Runs in any Python environment with vLLM (persona-guard is not needed there)::

    persona-guard screen DATA --vector V --out OUT --export-prompts prompts.jsonl
    python scripts/vllm_base_answers.py prompts.jsonl answers.jsonl --model MODEL_DIR
    persona-guard screen DATA --vector V --out OUT --base-answers answers.jsonl

Data parallel over G GPUs: one engine per GPU, each answering every G-th prompt, then concatenate
(the import accepts any order)::

    for k in $(seq 0 $((G - 1))); do
        CUDA_VISIBLE_DEVICES=$k python scripts/vllm_base_answers.py prompts.jsonl answers-$k.jsonl \\
            --model MODEL_DIR --shard $k/$G &
    done; wait; cat answers-*.jsonl > answers.jsonl

Each output line is the input line plus ``"answers"``: ``settings.n`` completions of the exact
prompt text (tokenized without adding special tokens, as persona-guard does), with
``max_tokens = settings.max_new_tokens``, the same temperature, top_p and seed, special tokens
skipped and surrounding whitespace stripped. ``MODEL_DIR`` must hold the same weights the
screening run loads (the embedded model is converted to ``~/.cache/persona-guard/models/smollm2-135m``).
"""

from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompts", help="JSONL written by persona-guard screen --export-prompts")
    parser.add_argument("answers", help="JSONL to write (one line per prompt of this shard)")
    parser.add_argument("--model", required=True, help="model dir or hub id vLLM loads")
    parser.add_argument("--shard", default="0/1", help="K/N: answer prompts K, K+N, K+2N, ... (default 0/1)")
    parser.add_argument("--dtype", default=None,
                        help="vLLM's dtype (default: the exported settings' dtype when the screen run set "
                             "--generation-dtype, else vLLM's auto)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                        help="share of GPU memory vLLM may take (on vLLM's CPU build: share of RAM for its KV cache)")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    shard, shards = (int(part) for part in args.shard.split("/"))
    with open(args.prompts, encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()][shard::shards]
    if not lines:
        raise SystemExit(f"{args.prompts}: no prompts for shard {args.shard}")
    settings = lines[0]["settings"]
    if any(line["settings"] != settings for line in lines):
        raise SystemExit(f"{args.prompts}: lines with different settings; export one screening run per file")
    wanted = settings.get("dtype")
    if wanted and args.dtype and args.dtype != wanted:
        raise SystemExit(f"{args.prompts}: the screen run asked for answers in {wanted}, not --dtype {args.dtype}")
    engine = LLM(model=args.model, dtype=args.dtype or wanted or "auto", seed=settings["seed"],
                 gpu_memory_utilization=args.gpu_memory_utilization)
    tokenizer = engine.get_tokenizer()
    params = SamplingParams(n=settings["n"], max_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                            top_p=settings["top_p"], seed=settings["seed"], skip_special_tokens=True)
    inputs = [{"prompt_token_ids": tokenizer(line["prompt"], add_special_tokens=False)["input_ids"]}
              for line in lines]
    outputs = engine.generate(inputs, params)
    staging = f"{args.answers}.{os.getpid()}.tmp"
    with open(staging, "w", encoding="utf-8") as handle:
        for line, output in zip(lines, outputs):
            answers = [choice.text.strip() for choice in output.outputs]
            handle.write(json.dumps(line | {"answers": answers}, ensure_ascii=False) + "\n")
    os.replace(staging, args.answers)
    print(f"{len(lines)} prompts answered -> {args.answers}")


if __name__ == "__main__":
    main()
