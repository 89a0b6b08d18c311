"""Training throughput of each preset family's small configuration, beside a Hugging Face LlamaForCausalLM of the
same width, depth and vocabulary measured in the same process (machines are noisy; the ratio holds).

One training step = forward + backward + AdamW step on a batch of `--batch` × `--seq-len` tokens, in fp32 and under
bf16 autocast. MFU = (training FLOPs per token × tokens/s) / peak, where training FLOPs = 3 × the forward FLOPs
counted by torch's FlopCounterMode, and the peak is the best square-matmul rate measured in this run per dtype.

Shapes: each `*-tiny` preset widened to `--hidden` (heads of 64 channels, MLP scaled in proportion) with a
`--vocab` vocabulary and dropout off; its depth is kept (per-layer patterns stay valid). The Llama reference uses
the same width, depth, heads and vocabulary, and SwiGLU width 2/3 of a 2-matrix MLP's (equal MLP parameters and
FLOPs), so tokens/s compares like with like on NGen4-like shapes (GPT-2 layout, full attention).

    PYTHONPATH=src python benchmarks/train_throughput.py [--presets ngen4-tiny n4-tiny] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from lmlab import LMLabForCausalLM, preset_config
from lmlab.presets import PRESETS, get_preset

GATED_MLPS = {"swiglu", "asgg", "geglu", "polynorm_gated"}  # three-matrix MLPs (a gate beside up and down)


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def forward_flops_per_token(model: torch.nn.Module, batch: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=batch[:1])
    return counter.get_total_flops() / batch.shape[1]


def tokens_per_second(model: torch.nn.Module, batch: torch.Tensor, precision: str, seconds: float) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    for _ in range(2):
        step()
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch.numel() / (time.perf_counter() - start)


def small_config(name: str, hidden: int, vocab: int):
    base = get_preset(name).config
    scale = hidden / base["hidden_size"]
    heads = hidden // 64
    kv_ratio = (base.get("num_key_value_heads") or base["num_attention_heads"]) / base["num_attention_heads"]
    overrides = dict(hidden_size=hidden, intermediate_size=int(base["intermediate_size"] * scale),
                     num_attention_heads=heads, num_key_value_heads=max(1, int(heads * kv_ratio)), head_dim=None,
                     vocab_size=vocab, embedding_dropout=0.0, attention_dropout=0.0, residual_dropout=0.0,
                     bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return preset_config(name, **overrides)


def llama_like(config) -> LlamaForCausalLM:
    gated = config.mlp in GATED_MLPS
    intermediate = config.intermediate_size if gated else int(config.intermediate_size * 2 / 3)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=intermediate,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, max_position_embeddings=4096,
        tie_word_embeddings=config.tie_word_embeddings, attn_implementation="sdpa"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="*", help="tiny presets to widen (default: every *-tiny preset)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    names = args.presets or sorted(n for n in PRESETS if n.endswith("-tiny"))
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    batch = torch.randint(0, args.vocab, (args.batch, args.seq_len))
    results = []
    for name in names:
        config = small_config(name, args.hidden, args.vocab)
        models = {"lmlab": LMLabForCausalLM(config), "hf_llama": llama_like(config)}
        flops = {key: 3 * forward_flops_per_token(model, batch) for key, model in models.items()}
        for precision in ("fp32", "bf16"):
            rates = {key: tokens_per_second(model, batch, precision, args.seconds) for key, model in models.items()}
            print(f"{name} {precision}: {rates}", file=sys.stderr, flush=True)
            results.append({
                "preset": name, "precision": precision, "hidden": config.hidden_size,
                "layers": config.num_hidden_layers, "vocab": config.vocab_size,
                "lmlab_tokens_per_s": round(rates["lmlab"]), "hf_llama_tokens_per_s": round(rates["hf_llama"]),
                "ratio_vs_hf": round(rates["lmlab"] / rates["hf_llama"], 3),
                "lmlab_mfu": round(flops["lmlab"] * rates["lmlab"] / peaks[precision], 4),
                "hf_llama_mfu": round(flops["hf_llama"] * rates["hf_llama"] / peaks[precision], 4),
                "lmlab_train_flops_per_token": flops["lmlab"], "hf_llama_train_flops_per_token": flops["hf_llama"],
            })
    print(json.dumps({
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "shape": {"batch": args.batch, "seq_len": args.seq_len},
        "matmul_peak_flops": {k: round(v) for k, v in peaks.items()},
        "results": results,
        "caveat": "shared, noisy machine: compare the ratio and MFU measured in the same run, not absolute rates",
    }, indent=1))


if __name__ == "__main__":
    main()
