"""Peak memory of the language-model loss, forward + backward: chunked linear cross-entropy vs materialised logits.

Default shape: NeoLLM's head (vocabulary 151,665, hidden 512, tied) at batch 8 × 512 tokens, fp32. Each method runs in
a fresh subprocess. Two measurements per method:

- `tracked_peak_bytes`: PyTorch's MemTracker (torch.distributed._tools.mem_tracker, a TorchDispatchMode) records
  every tensor storage that any op creates during the loss forward and backward (the weight and hidden gradients
  included) and when it is freed; the peak of the live total, minus the inputs (hidden states, head weight,
  labels), is the memory the loss needs. Exact and independent of the allocator.
- `rss_peak_delta_bytes`: the process's peak resident set (getrusage ru_maxrss) minus its resident set just before
  the loss: what the operating system saw, allocator caching included.

The ratio chunked / materialised is the result (target ≤ 0.25). Prints JSON.

    PYTHONPATH=src python benchmarks/chunked_loss_memory.py [--batch 8] [--seq-len 512] [--vocab 151665]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from lmlab.nn.loss import shifted_cross_entropy, shifted_linear_cross_entropy


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(method: str, batch: int, seq_len: int, vocab: int, hidden_size: int) -> dict:
    from torch.distributed._tools.mem_tracker import MemTracker

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, seq_len, hidden_size, generator=g).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) * 0.02).requires_grad_()
    labels = torch.randint(0, vocab, (batch, seq_len), generator=g)
    inputs = sum(t.numel() * t.element_size() for t in (hidden, weight, labels))
    tracker = MemTracker()
    tracker.track_external(hidden, weight, labels)
    rss_before = resident_bytes()
    start = time.perf_counter()
    with warnings.catch_warnings(), tracker:
        warnings.simplefilter("ignore")
        if method == "chunked":
            loss = shifted_linear_cross_entropy(hidden, weight, labels)
        else:
            loss = shifted_cross_entropy(F.linear(hidden, weight), labels)
        loss.backward()
    seconds = time.perf_counter() - start
    peak = sum(snapshot["Total"] for snapshot in tracker.get_tracker_snapshot("peak").values())
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "loss": loss.item(), "seconds": round(seconds, 2),
            "tracked_peak_bytes": peak - inputs, "rss_peak_delta_bytes": rss_peak - rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=151665)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--method", choices=["chunked", "materialised"], help=argparse.SUPPRESS)  # subprocess
    args = parser.parse_args()
    shape = (args.batch, args.seq_len, args.vocab, args.hidden_size)
    if args.method:
        print(json.dumps(measure(args.method, *shape)))
        return
    results = {}
    for method in ("chunked", "materialised"):
        command = [sys.executable, __file__, "--method", method, "--batch", str(args.batch), "--seq-len",
                   str(args.seq_len), "--vocab", str(args.vocab), "--hidden-size", str(args.hidden_size)]
        results[method] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    chunked, full = results["chunked"], results["materialised"]
    logits_bytes = args.batch * (args.seq_len - 1) * args.vocab * 4
    print(json.dumps({
        "benchmark": "chunked_linear_cross_entropy_peak_memory_forward_backward",
        "shape": {"batch": args.batch, "seq_len": args.seq_len, "vocab": args.vocab, "hidden_size": args.hidden_size,
                  "dtype": "float32"},
        "fp32_logits_bytes": logits_bytes,
        "chunked": chunked, "materialised": full,
        "tracked_peak_ratio": round(chunked["tracked_peak_bytes"] / full["tracked_peak_bytes"], 4),
        "rss_peak_ratio": round(chunked["rss_peak_delta_bytes"] / full["rss_peak_delta_bytes"], 4),
        "target_ratio": 0.25,
        "loss_difference": abs(chunked["loss"] - full["loss"]),
        "torch": torch.__version__,
    }, indent=2))


if __name__ == "__main__":
    main()
