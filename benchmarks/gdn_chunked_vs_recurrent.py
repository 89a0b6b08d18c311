"""Gated DeltaNet: chunked WY form vs the token-by-token recurrence, forward + backward, in the same process.

Shape: the neollm-110m Gated DeltaNet (16 value heads, d_k = d_v = 32; key heads already repeated to 16), T = 512,
inputs as the layer produces them (L2-normalised q, k; g ≤ 0; β ∈ (0, 1)), fp32. Both forms get the same inputs and
the outputs are checked to agree. Prints JSON; the ratio is the result (absolute times depend on machine load).

    PYTHONPATH=src python benchmarks/gdn_chunked_vs_recurrent.py [--batch 4] [--seq-len 512] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lmlab import preset_config
from lmlab.nn.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule


def inputs(batch: int, seq_len: int, config, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    heads, dk, dv = config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim
    q = F.normalize(torch.randn(batch, seq_len, heads, dk, generator=g), dim=-1)
    k = F.normalize(torch.randn(batch, seq_len, heads, dk, generator=g), dim=-1)
    v = torch.randn(batch, seq_len, heads, dv, generator=g)
    decay = -F.softplus(torch.randn(batch, seq_len, heads, generator=g)) * 0.5
    beta = torch.sigmoid(torch.randn(batch, seq_len, heads, generator=g))
    return [x.requires_grad_() for x in (q, k, v, decay, beta)]


def forward_backward(fn, tensors, scale, **kwargs):
    for t in tensors:
        t.grad = None
    start = time.perf_counter()
    o, state = fn(*tensors, scale=scale, **kwargs)
    (o.square().mean() + state.square().mean()).backward()
    return time.perf_counter() - start, o.detach(), [t.grad.clone() for t in tensors]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = preset_config("neollm-110m")
    tensors = inputs(args.batch, args.seq_len, config)
    scale = config.linear_key_head_dim ** -0.5
    chunked = lambda: forward_backward(chunk_gated_delta_rule, tensors, scale, chunk_size=config.linear_chunk_size)
    recurrent = lambda: forward_backward(recurrent_gated_delta_rule, tensors, scale)
    chunked(), recurrent()  # warm-up
    chunked_times, recurrent_times = [], []
    for _ in range(args.repeats):  # interleaved, so load changes hit both
        t, o_chunk, g_chunk = chunked()
        chunked_times.append(t)
        t, o_rec, g_rec = recurrent()
        recurrent_times.append(t)
    chunked_s, recurrent_s = statistics.median(chunked_times), statistics.median(recurrent_times)
    print(json.dumps({
        "benchmark": "gated_deltanet_chunked_vs_recurrent_forward_backward",
        "shape": {"batch": args.batch, "seq_len": args.seq_len, "heads": config.linear_num_value_heads,
                  "d_k": config.linear_key_head_dim, "d_v": config.linear_value_head_dim,
                  "chunk_size": config.linear_chunk_size, "dtype": "float32"},
        "chunked_s": round(chunked_s, 4), "recurrent_s": round(recurrent_s, 4),
        "speedup": round(recurrent_s / chunked_s, 2), "target_speedup": 5.0,
        "max_abs_output_difference": (o_chunk - o_rec).abs().max().item(),
        "max_abs_gradient_difference": max((a - b).abs().max().item() for a, b in zip(g_chunk, g_rec, strict=True)),
        "repeats": args.repeats, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
