"""Sliding-window attention: lmlab's query-blocked kernel against one dense masked SDPA call, same process.

Prints JSON: per sequence length, the median forward time of each path (and their ratio) and the largest score
matrix each materialises. Shapes default to yatgpt-d12's short-window layers (12 heads of 64, window 256).
Timings on a shared CPU are noisy: compare the ratio, not the absolute numbers.

    PYTHONPATH=src python benchmarks/windowed_attention.py [--lengths 1024 4096] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from lmlab.nn.attention import WINDOW_QUERY_BLOCK, causal_attention, visibility_mask


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(t: int, window: int, heads: int, head_dim: int, dtype: torch.dtype, repeats: int) -> dict:
    q, k, v = (torch.randn(1, heads, t, head_dim, dtype=dtype) for _ in range(3))
    scale = head_dim ** -0.5
    mask = visibility_mask(t, t, 0, 0, None, window, q.device)

    def blocked():
        return causal_attention(q, k, v, scale=scale, q_start=0, window=window)

    def dense():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    max_diff = (blocked().float() - dense().float()).abs().max().item()
    blocked_s, dense_s = median_seconds(blocked, repeats), median_seconds(dense, repeats)
    block = min(WINDOW_QUERY_BLOCK, t)
    return {"seq_len": t, "blocked_s": blocked_s, "dense_masked_s": dense_s, "dense_over_blocked": dense_s / blocked_s,
            "blocked_largest_scores": [block, block + window], "dense_scores": [t, t], "max_abs_diff": max_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    results = [measure(t, args.window, args.heads, args.head_dim, dtype, args.repeats) for t in args.lengths]
    print(json.dumps({"benchmark": "windowed_attention", "machine": platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads(), "dtype": args.dtype, "window": args.window,
                      "heads": args.heads, "head_dim": args.head_dim, "results": results}, indent=2))


if __name__ == "__main__":
    main()
