"""Served monitor throughput: monitoring on vs off on the same server, batching vs one at a time.

Starts ``persona-guard serve`` twice on loopback with one persona vector: server A batches (up to
``--clients`` rows per batch), server B generates one request at a time (``--max-batch-rows 1``).
``--clients`` concurrent clients (the official ``openai`` async client, a bounded pool) each send
requests back to back, greedy, ``--max-tokens`` tokens each. Phases are interleaved in rounds
(A monitored, A unmonitored, B monitored) so load drifting on a shared machine hits all alike;
the unmonitored phase turns readings off per request (``"persona_guard": {"monitor": false}``, allowed
by ``--allow-unmonitored``), so it runs in the same server process as the monitored one.

    python benchmarks/serve_monitor.py [--model smollm2-135m] [--clients 8] [--requests 32] [--rounds 3]

Prints requests/s and p50/p99 latency per phase, the monitoring overhead and the batching speed-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import torch
from transformers import AutoConfig

from persona_guard.models import DEFAULT_MODEL, resolve_model_path
from persona_guard.vectors import PersonaVector

REPO = Path(__file__).resolve().parents[1]
TOPICS = ("bread", "rivers", "budgets", "recursion", "planets", "music", "gardens", "inflation",
          "encryption", "volcanoes", "chess", "tides")


def start(args: list[str]) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-m", "persona_guard.cli", "serve", "--port", "0", *args], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if "persona-guard serve:" in line:
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, line.split(" on ")[1].split()[0]
    raise SystemExit(f"server exited with {process.wait()}")


async def phase(url: str, clients: int, requests: int, max_tokens: int, monitor: bool) -> list[float]:
    api = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            messages = [{"role": "user", "content": f"Tell me something about {TOPICS[i % len(TOPICS)]}."}]
            extra = {} if monitor else {"persona_guard": {"monitor": False}}
            started = time.perf_counter()
            reply = await api.chat.completions.create(model="bench", messages=messages, max_tokens=max_tokens,
                                                      temperature=0, extra_body=extra)
            latencies.append(time.perf_counter() - started)
            assert bool(reply.model_extra["persona_guard"]["choices"][0]["traits"]) == monitor

    await asyncio.gather(*(worker() for _ in range(clients)))
    await api.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="requests per phase and round")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layer", type=int, default=None, help="vector layer (default: the middle one)")
    parser.add_argument("--batch-window-ms", type=float, default=50.0,
                        help="server A's batching window (requests arriving later wait for the next batch)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that the servers below are stopped too

    config = AutoConfig.from_pretrained(resolve_model_path(args.model))
    layers = config.num_hidden_layers
    with tempfile.TemporaryDirectory() as tmp:
        vector = PersonaVector("probe", args.model, torch.randn(layers + 1, config.hidden_size,
                                                                generator=torch.Generator().manual_seed(0)),
                               default_layer=args.layer or layers // 2)
        path = vector.save(Path(tmp) / "probe.safetensors")
        common = ["--model", args.model, "--device", "cpu", "--served-model-name", "bench", "--monitor", str(path),
                  "--allow-unmonitored"]
        batched, batched_url = start([*common, "--max-batch-rows", str(args.clients),
                                      "--batch-window-ms", str(args.batch_window_ms)])
        serial, serial_url = start([*common, "--max-batch-rows", "1"])
        try:
            phases = {"batched, monitored": (batched_url, True), "batched, unmonitored": (batched_url, False),
                      "one at a time, monitored": (serial_url, True)}
            asyncio.run(phase(batched_url, args.clients, args.clients, args.max_tokens, True))  # warm-up
            asyncio.run(phase(serial_url, 2, 2, args.max_tokens, True))
            results: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in phases}
            for _ in range(args.rounds):
                for name, (url, monitor) in phases.items():
                    started = time.perf_counter()
                    latencies = asyncio.run(phase(url, args.clients, args.requests, args.max_tokens, monitor))
                    done, spent = results[name]
                    results[name] = (done + latencies, spent + time.perf_counter() - started)
        finally:
            for process in (batched, serial):
                process.terminate()
                process.wait(timeout=30)
    print(f"{args.model}, {args.clients} clients, {args.requests} requests x {args.rounds} rounds per phase, "
          f"max_tokens {args.max_tokens}, greedy, layer {vector.default_layer} (timed under load from other "
          "processes on this machine: compare the ratios, not the absolute numbers)")
    rates = {}
    for name, (latencies, spent) in results.items():
        rates[name] = len(latencies) / spent
        print(f"  {name:26s} {rates[name]:6.2f} req/s   p50 {percentile(latencies, 50):6.2f} s   "
              f"p99 {percentile(latencies, 99):6.2f} s")
    cost = 1 - rates["batched, monitored"] / rates["batched, unmonitored"]
    print(f"monitoring costs {100 * cost:.1f}% of throughput (target <= 5%)")
    print(f"batching gives {rates['batched, monitored'] / rates['one at a time, monitored']:.2f}x the requests/s of "
          f"one-at-a-time serving at {args.clients} clients (target >= 2x)")


if __name__ == "__main__":
    main()
