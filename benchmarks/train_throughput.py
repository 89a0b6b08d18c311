"""Training-step throughput of lmlab beside reference implementations of the same models, in one process.

Comparisons (each in fp32 and under bf16 autocast, variants interleaved, best of --rounds):
  ngen4-50m         vs Hugging Face GPTNeoXForCausalLM with the same width, depth, heads, vocabulary, rotary share,
                    GELU-tanh MLP, biases, tied head and sequential residual (use_parallel_residual=False)
  N4 d512/L8/I1024/H4/V32768 (the N4 preset at that size)  vs the official N4 code (tests/reference/n4_official.py)
plus the bf16 MFU of ngen4-50m: 6·N·tokens/s ÷ the bf16 matmul peak measured in this process.

lmlab runs the trainer's own step (lmlab.train.step: the loss from the hidden states, the optimizer lmlab builds);
the references run the plain loop (forward with labels, backward, optimizer step, zero_grad) with the same AdamW
(fused). Dropout is off on both sides and neither clips gradients, so both compute the same function.

    PYTHONPATH=src python benchmarks/train_throughput.py [--quick] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    best_of,
    gemm_note,
    gemm_share,
    machine,
    machine_line,
    matmul_peak,
    print_table,
    row,
    skipped_bf16,
    timed_precisions,
)
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from lmlab import LMLabForCausalLM, preset_config
from lmlab.hardware import keep_freed_memory, set_threads
from lmlab.model import count_parameters
from lmlab.train import distributed as dist_utils
from lmlab.train.config import TrainConfig
from lmlab.train.schedules import build_schedule
from lmlab.train.step import step_parts, train_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference.n4_official import N4C  # noqa: E402

NO_DROPOUT = dict(embedding_dropout=0.0, attention_dropout=0.0, residual_dropout=0.0)
N4_SHAPE = dict(hidden_size=512, num_hidden_layers=8, intermediate_size=1024, num_attention_heads=4, vocab_size=32768)
FULL, QUICK = (8, 512), (2, 256)  # (batch, sequence length)
TARGETS = {"ngen4-50m": 1.25, "n4": 1.5}
MFU_TARGET = 0.40
LR = 1e-4


def lmlab_step(config, batch: torch.Tensor, precision: str):
    """The trainer's step on a fresh model of `config` (AdamW as lmlab builds it, no clipping)."""
    model = LMLabForCausalLM(config).train()
    train_config = TrainConfig(preset="bench", precision=precision, grad_clip=None,
                               optimizer={"name": "adamw", "lr": LR})
    parts = step_parts(model, train_config, build_schedule({"name": "constant"}, LR, 10**9), batch.device)
    env = dist_utils.Environment()
    return model, lambda: train_step(model, [batch], 1, parts, env)


def reference_step(model: torch.nn.Module, loss_fn, batch: torch.Tensor, precision: str):
    """The plain training step of a reference model: autocast forward, loss, backward, fused AdamW."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def neox_like(config) -> GPTNeoXForCausalLM:
    """GPT-NeoX with NGen4's shape and parts: sequential residual, GELU-tanh, biases, tied head, rotary share."""
    return GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act="gelu_new", rotary_pct=config.rope_pct, rotary_emb_base=config.rope_theta,
        rope_parameters={"rope_theta": config.rope_theta, "partial_rotary_factor": config.rope_pct,
                         "rope_type": "default"},
        max_position_embeddings=config.max_position_embeddings, layer_norm_eps=config.norm_eps,
        use_parallel_residual=False, tie_word_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0,
        attn_implementation="sdpa"))


def hf_loss(model, batch):
    return model(input_ids=batch, labels=batch).loss


def n4_official_loss(model, batch):
    """The official N4 loss: logits (fp32) of every position but the last against the next tokens."""
    logits = model(batch)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def compare(name: str, config, reference: torch.nn.Module, loss_fn, shape, rounds: int) -> dict:
    """Tokens/s of lmlab's and the reference's step in fp32 and bf16 (interleaved, best of rounds), and the share of
    each step spent in GEMMs (common.gemm_share)."""
    batch = torch.randint(0, config.vocab_size, shape, generator=torch.Generator().manual_seed(0))
    results = {}
    for precision in timed_precisions():
        torch.manual_seed(0)
        model, ours = lmlab_step(config, batch, precision)
        theirs = reference_step(reference, loss_fn, batch, precision)
        for fn in (ours, theirs):  # warm-up: optimizer state, allocator, kernels
            fn()
        best = best_of(rounds, {"lmlab": ours, "reference": theirs})
        tokens = batch.numel()
        results[precision] = {
            "lmlab_tokens_per_s": tokens / best["lmlab"]["wall_s"],
            "reference_tokens_per_s": tokens / best["reference"]["wall_s"],
            "ratio": best["reference"]["wall_s"] / best["lmlab"]["wall_s"],
            "cpu_time_ratio": best["reference"]["cpu_s"] / best["lmlab"]["cpu_s"],
            "reference_gemm_share": gemm_share(theirs),
            "lmlab_gemm_share": gemm_share(ours), "parameters": count_parameters(model)}
        print(f"{name} {precision}: {json.dumps(results[precision])}", file=sys.stderr, flush=True)
    return results


def measure(quick: bool, rounds: int) -> dict:
    shape = QUICK if quick else FULL
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {precision: matmul_peak(dtypes[precision]) for precision in timed_precisions()}
    ngen4 = preset_config("ngen4-50m", **NO_DROPOUT)
    n4 = preset_config("n4-127m", **N4_SHAPE)
    torch.manual_seed(0)
    results = {
        "ngen4-50m": compare("ngen4-50m vs HF GPT-NeoX", ngen4, neox_like(ngen4), hf_loss, shape, rounds),
        "n4": compare("N4 vs official", n4, N4C(n4.vocab_size, n4.hidden_size, n4.intermediate_size,
                                                  n4.num_attention_heads, n4.num_hidden_layers),
                      n4_official_loss, shape, rounds),
    }
    for precision in timed_precisions():
        r = results["ngen4-50m"][precision]
        r["lmlab_mfu"] = 6 * r["parameters"] * r["lmlab_tokens_per_s"] / peaks[precision]
        r["reference_mfu"] = 6 * r["parameters"] * r["reference_tokens_per_s"] / peaks[precision]
    return {"machine": machine(), "shape": {"batch": shape[0], "seq_len": shape[1]},
            "matmul_peak_flops": peaks, "results": results}


def table_rows(measured: dict) -> list[dict]:
    shape = measured["shape"]
    size = f"B {shape['batch']}, T {shape['seq_len']}"
    rows = []
    for key, label in (("ngen4-50m", "ngen4-50m vs HF GPT-NeoX"), ("n4", "N4 d512/L8 vs official N4")):
        for precision in ("fp32", "bf16"):
            name = f"{label}, {precision} ({size})"
            r = measured["results"][key].get(precision)
            rows.append(skipped_bf16(name, TARGETS[key]) if r is None else
                        row(name, r["ratio"], TARGETS[key], f"CPU-time ratio {r['cpu_time_ratio']:.2f}; "
                            + gemm_note(r["reference_gemm_share"], r["lmlab_gemm_share"], "reference")))
    fp32 = measured["results"]["ngen4-50m"]["fp32"]
    if "bf16" not in measured["results"]["ngen4-50m"]:
        return rows + [skipped_bf16(f"ngen4-50m bf16 MFU ({size})", MFU_TARGET)]
    for key, label in (("ngen4-50m", "ngen4-50m"), ("n4", "N4 d512/L8")):
        r = measured["results"][key]
        rows.append(row(f"{label} bf16 vs fp32 step, lmlab ({size}; auto chooses bf16 here)",
                        r["bf16"]["lmlab_tokens_per_s"] / r["fp32"]["lmlab_tokens_per_s"], 1.0))
    bf16 = measured["results"]["ngen4-50m"]["bf16"]
    rows.append(row(f"ngen4-50m bf16 MFU ({size})", bf16["lmlab_mfu"], MFU_TARGET,
                    f"GPT-NeoX: {bf16['reference_mfu']:.3f}; fp32 MFU {fp32['lmlab_mfu']:.3f}"))
    return rows


def rows(quick: bool) -> list[dict]:
    """run_all.py's interface."""
    return table_rows(measure(quick, rounds=2 if quick else 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"B×T {QUICK[0]}×{QUICK[1]} instead of "
                                                             f"{FULL[0]}×{FULL[1]}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: lmlab's, lmlab.hardware)")
    args = parser.parse_args()
    set_threads(args.threads)
    keep_freed_memory()
    measured = measure(args.quick, args.rounds)
    print(json.dumps(measured, indent=1))
    print(machine_line(measured["machine"]), file=sys.stderr)
    print_table(table_rows(measured), file=sys.stderr)


if __name__ == "__main__":
    main()
