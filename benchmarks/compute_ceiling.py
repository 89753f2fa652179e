"""How much faster a forward stopped at a layer can be than the full one, on this machine.

Shared by the speed benchmarks: the matmul work per token of the truncated forward against the
full forward with the LM head, the matmul throughput each side reached, and that of one large
matmul (about the best this machine gives a model's matmuls). On a compute-bound CPU the
speed-up over the one-sample full-forward loop cannot exceed

    (full work / truncated work) x (large-matmul throughput / the loop's throughput)

whatever the batching; on a GPU the second factor is where batching pays.
"""

from __future__ import annotations

import time

import torch

from persona_guard.models import decoder_layers


def matmul_work_per_token(model, layer: int) -> tuple[int, int]:
    """Multiply-adds per token in weight matmuls: (forward stopped after ``layer``, full forward with
    the LM head). Attention scores and element-wise ops are left out (small at these lengths)."""
    def weights(module) -> int:
        return sum(p.numel() for p in module.parameters() if p.dim() == 2)
    blocks = decoder_layers(model)
    full = sum(weights(block) for block in blocks) + model.get_output_embeddings().weight.numel()
    return sum(weights(block) for block in blocks[:layer]), full


@torch.no_grad()
def large_matmul_gflops(dtype: torch.dtype, rows: int = 4096, inner: int = 576, cols: int = 1536,
                        rounds: int = 5, repeats: int = 10) -> float:
    """Best of ``rounds`` timings: an upper bound wants the machine at its fastest."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * rows * inner * cols * repeats / best / 1e9


def report_ceiling(model, layer: int, tokens: int, truncated_seconds: float, full_seconds: float) -> dict:
    """Print (and return) the work ratio, the throughputs and the resulting ceiling."""
    truncated, full = matmul_work_per_token(model, layer)
    truncated_gflops = 2 * truncated * tokens / truncated_seconds / 1e9
    full_gflops = 2 * full * tokens / full_seconds / 1e9
    large = large_matmul_gflops(next(model.parameters()).dtype)
    ceiling = full / truncated * large / full_gflops
    print(f"matmul work per token: {truncated / 1e6:.1f}M stopped at layer {layer} vs {full / 1e6:.1f}M full "
          f"= {full / truncated:.2f}x less work")
    print(f"matmul throughput: truncated {truncated_gflops:.0f} GFLOP/s, one-sample full loop {full_gflops:.0f} "
          f"GFLOP/s, one large matmul {large:.0f} GFLOP/s")
    print(f"ceiling on this machine (every matmul at the large-matmul rate): {ceiling:.1f}x the full loop")
    return {"work_ratio": full / truncated, "truncated_gflops": truncated_gflops, "full_loop_gflops": full_gflops,
            "large_matmul_gflops": large, "ceiling": ceiling}
