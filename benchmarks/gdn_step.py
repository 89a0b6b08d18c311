"""Gated DeltaNet chunk kernel and the NeoLLM-110M training step, this tree against a baseline commit and against
Hugging Face's Qwen3-Next at the same sizes, on a CPU. Prints JSON.

Sections (`--sections`, default all):
  kernel   the chunked gated delta rule alone, forward + backward, at neollm-110m's GDN sizes (16 value heads of
           d_k = d_v = 32, chunk 64, T = --seq-len) for each --kernel-batch: this tree's kernel against the baseline
           commit's (`--baseline`, loaded from git), fp32 and under bf16 autocast; best-of-rounds time, bytes saved
           for the backward, and peak-RSS growth of one forward + backward in a fresh process. Decays as the layer
           makes them at initialisation (A ~ U(0, 16)).
  model    one training step (forward, backward, AdamW step) of neollm-110m (preset as published but dropout off,
           chunked loss) against Qwen3NextForCausalLM (transformers, pure-torch path on a CPU) with the same sizes
           (d 512, 12 layers with full attention at 4, 8, 12, 8 heads / 2 KV heads of 64, linear attention 8 key /
           16 value heads of 32, dense MLP 1024, vocabulary 151,665, tied), both with the AdamW this tree builds;
           plus `lmlab_baseline` (the baseline commit's kernel and torch's per-parameter AdamW loop). fp32 and bf16
           autocast, --batch × --seq-len tokens, variants interleaved in each round, best of --rounds; and the
           share of lmlab's and HF's step spent in GEMMs (common.gemm_share).
  optim    one optimizer step over neollm-110m's parameters: AdamW as torch's per-parameter loop (torch's CPU
           default), foreach and fused (what build_optimizers picks here); AdEMAMix (the NeoLLM recipe) of the
           baseline commit and of this tree.
  memory   peak RSS of neollm-110m training (preset as published) at --memory-batch × --seq-len in bf16 (two
           steps; fresh process per variant; lmlab's with the malloc setting `lmlab train` uses).
  profile  torch.profiler's top operators (self CPU time) of one neollm-110m bf16 step with this tree's code.

The machine is shared and noisy: compare ratios measured in the same run (rounds interleave the variants), not
absolute times. CPU flags and the load average are printed with the results. run_all.py takes the model comparison
(lmlab and HF only) and lmlab's memory as rows (`rows`).

    PYTHONPATH=src python benchmarks/gdn_step.py [--sections memory kernel optim model profile] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from common import best_of, gemm_note, gemm_share, machine, row, skipped_bf16, timed_precisions

from lmlab import LMLabForCausalLM, preset_config
from lmlab.hardware import keep_freed_memory, set_threads
from lmlab.nn import gated_deltanet
from lmlab.nn.delta_rule import chunk_gated_delta_rule
from lmlab.train.optim import AdEMAMix, build_optimizers, parameter_groups

REPO = Path(__file__).resolve().parents[1]
PRESET = "neollm-110m"
ADAMW = {"name": "adamw", "lr": 6e-4, "weight_decay": 0.1}
BASELINE = "b0dc7cc"  # the commit before the perf-gdn work


def git_module(rev: str, path: str) -> types.ModuleType:
    """The module at `path` as it was at `rev` (read from git), as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType(f"{Path(path).stem}_{rev}")
    exec(compile(source, f"{path}@{rev}", "exec"), module.__dict__)
    return module


def baseline_module(rev: str) -> types.ModuleType:
    """`lmlab.nn.delta_rule` as it was at `rev`."""
    return git_module(rev, "src/lmlab/nn/delta_rule.py")


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


# ---- kernel

def kernel_inputs(batch: int, seq_len: int, config, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, dk, dv = config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim
    q = F.normalize(torch.randn(batch, seq_len, h, dk, generator=gen), dim=-1)
    k = F.normalize(torch.randn(batch, seq_len, h, dk, generator=gen), dim=-1)
    v = torch.randn(batch, seq_len, h, dv, generator=gen)
    a = torch.rand(h, generator=gen) * 16  # A = exp(A_log), A_log = log U(0, 16)
    g = -a * F.softplus(torch.randn(batch, seq_len, h, generator=gen) * 0.5 + 1.0)  # dt_bias = 1
    beta = torch.sigmoid(torch.randn(batch, seq_len, h, generator=gen))
    return [x.requires_grad_() for x in (q, k, v, g, beta)]


def kernel_step(kernel, inputs, precision: str, scale: float):
    for x in inputs:
        x.grad = None
    with autocast(precision):
        o, state = kernel(*inputs, scale=scale)
    (o.square().mean() + state.square().mean()).backward()
    return o.detach()


def saved_bytes(kernel, inputs, precision: str, scale: float) -> int:
    """Bytes the kernel keeps for its backward (distinct storages)."""
    storages = {}

    def pack(x):
        storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), autocast(precision):
        o, state = kernel(*inputs, scale=scale)
    ours = {x.untyped_storage().data_ptr() for x in inputs}
    return sum(n for ptr, n in storages.items() if ptr not in ours)


def kernel_section(args, baseline) -> list[dict]:
    config = preset_config(PRESET)
    scale = config.linear_key_head_dim ** -0.5
    kernels = {"new": chunk_gated_delta_rule, "old": baseline.chunk_gated_delta_rule}
    results = []
    for batch in args.kernel_batch:
        inputs = kernel_inputs(batch, args.seq_len, config)
        variants = {f"{name}_{precision}": (lambda kernel=kernel, precision=precision, inputs=inputs:
                                            kernel_step(kernel, inputs, precision, scale))
                    for precision in ("fp32", "bf16") for name, kernel in kernels.items()}
        for fn in variants.values():  # warm-up
            fn()
        times = best_of(args.rounds, variants)
        reference = kernel_step(baseline.recurrent_gated_delta_rule, inputs, "fp32", scale).double()  # fp32
        for precision in ("fp32", "bf16"):
            row = {"batch": batch, "seq_len": args.seq_len, "precision": precision}
            for name, kernel in kernels.items():
                out = kernel_step(kernel, inputs, precision, scale).double()
                row[name] = {**times[f"{name}_{precision}"],
                             "saved_for_backward_MiB": round(saved_bytes(kernel, inputs, precision, scale) / 2**20, 2),
                             "peak_rss_growth_MiB": kernel_peak_rss(args, name, batch, precision),
                             "relative_error_vs_recurrence": float((out - reference).norm() / reference.norm())}
            row["speedup_wall"] = round(row["old"]["wall_s"] / row["new"]["wall_s"], 2)
            row["speedup_cpu"] = round(row["old"]["cpu_s"] / row["new"]["cpu_s"], 2)
            results.append(row)
            print(f"kernel B={batch} {precision}: {row['speedup_wall']}x", file=sys.stderr, flush=True)
    return results


def kernel_peak_rss(args, name: str, batch: int, precision: str) -> float:
    return float(child(args, "kernel-rss", name, str(batch), precision))


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**10


def kernel_rss_child(args, name: str, batch: str, precision: str) -> float:
    kernel = chunk_gated_delta_rule if name == "new" else baseline_module(args.baseline).chunk_gated_delta_rule
    config = preset_config(PRESET)
    inputs = kernel_inputs(int(batch), args.seq_len, config)
    before = peak_rss_mib()
    kernel_step(kernel, inputs, precision, config.linear_key_head_dim ** -0.5)
    return round(peak_rss_mib() - before, 1)


# ---- model

def hf_qwen3_next(config) -> torch.nn.Module:
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    return Qwen3NextForCausalLM(Qwen3NextConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        linear_num_key_heads=config.linear_num_key_heads, linear_key_head_dim=config.linear_key_head_dim,
        linear_num_value_heads=config.linear_num_value_heads, linear_value_head_dim=config.linear_value_head_dim,
        linear_conv_kernel_dim=config.linear_conv_kernel_dim, num_experts=0, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta,
                         "partial_rotary_factor": config.rope_pct}))


@contextlib.contextmanager
def baseline_kernel(baseline):
    """neollm's GDN layers call the baseline commit's gated_delta_rule inside this context."""
    current = gated_deltanet.gated_delta_rule
    gated_deltanet.gated_delta_rule = baseline.gated_delta_rule
    try:
        yield
    finally:
        gated_deltanet.gated_delta_rule = current


NO_DROPOUT = dict(attention_dropout=0.0, residual_dropout=0.0)
SPEED_TARGET, MEMORY_TARGET = 2.0, 6.0  # × HF Qwen3-Next's step; GiB peak RSS at B 8, T 512, bf16
QUICK_SHAPE, FULL_SHAPE = (1, 256), (2, 512)  # (batch, sequence length) of run_all's step comparison


def build_variant(name: str, baseline, dropout: bool = True):
    """(model, optimizer, context) of a variant; `dropout=False`: lmlab's dropout off (Qwen3-Next has none)."""
    torch.manual_seed(0)
    config = preset_config(PRESET, **({} if dropout else NO_DROPOUT))
    if name == "hf_qwen3_next":
        model = hf_qwen3_next(config)
        return model, build_optimizers(model, ADAMW)[0], contextlib.nullcontext
    model = LMLabForCausalLM(config)
    if name == "lmlab":
        return model, build_optimizers(model, ADAMW)[0], contextlib.nullcontext
    groups = parameter_groups(model.named_parameters(), ADAMW["weight_decay"])
    return model, torch.optim.AdamW(groups, lr=ADAMW["lr"], foreach=False), lambda: baseline_kernel(baseline)


def train_step(model, optimizer, context, batch, precision: str):
    with context(), autocast(precision):
        loss = model(input_ids=batch, labels=batch).loss
    with context():
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def model_section(args, baseline, names=("lmlab", "lmlab_baseline", "hf_qwen3_next")) -> list[dict]:
    built = {name: build_variant(name, baseline, dropout=False) for name in names}
    for model, *_ in built.values():
        model.train()
    batch = torch.randint(0, preset_config(PRESET).vocab_size, (args.batch, args.seq_len),
                          generator=torch.Generator().manual_seed(0))
    results = []
    for precision in timed_precisions():
        variants = {name: (lambda parts=parts, precision=precision: train_step(*parts, batch, precision))
                    for name, parts in built.items()}
        for fn in variants.values():  # warm-up (optimizer state, first-touch allocations)
            fn()
        times = best_of(args.rounds, variants)
        tokens = batch.numel()
        row = {"precision": precision, "batch": args.batch, "seq_len": args.seq_len,
               **{name: {**t, "tokens_per_s": round(tokens / t["wall_s"])} for name, t in times.items()},
               "lmlab_speedup_vs_hf": times["hf_qwen3_next"]["wall_s"] / times["lmlab"]["wall_s"],
               "cpu_time_ratio_vs_hf": times["hf_qwen3_next"]["cpu_s"] / times["lmlab"]["cpu_s"]}
        if "hf_qwen3_next" in variants:
            row["hf_gemm_share"] = gemm_share(variants["hf_qwen3_next"])
            row["lmlab_gemm_share"] = gemm_share(variants["lmlab"])
        if "lmlab_baseline" in times:
            row["lmlab_speedup_vs_baseline"] = times["lmlab_baseline"]["wall_s"] / times["lmlab"]["wall_s"]
        results.append(row)
        print(f"model {precision}: {row['lmlab_speedup_vs_hf']:.2f}x vs HF", file=sys.stderr, flush=True)
    return results


def memory_child(args, name: str) -> float:
    """Peak RSS (GiB) of two bf16 steps; lmlab's variants with the allocator setting `lmlab train` uses."""
    if name.startswith("lmlab"):
        keep_freed_memory()
    model, optimizer, context = build_variant(name, baseline_module(args.baseline))
    model.train()
    batch = torch.randint(0, preset_config(PRESET).vocab_size, (args.memory_batch, args.seq_len))
    for _ in range(2):
        train_step(model, optimizer, context, batch, "bf16")
    return round(peak_rss_mib() / 2**10, 2)


def memory_section(args, names=("lmlab", "lmlab_baseline", "hf_qwen3_next")) -> dict:
    result = {"batch": args.memory_batch, "seq_len": args.seq_len, "precision": "bf16", "target_GiB": MEMORY_TARGET}
    for name in names:
        try:
            result[name] = {"peak_rss_GiB": float(child(args, "memory", name))}
        except subprocess.CalledProcessError as error:  # e.g. killed when the shared machine runs out of memory
            result[name] = {"failed": f"exit status {error.returncode}"}
    return result


# ---- optimizers

def optim_section(args) -> dict:
    model = LMLabForCausalLM(preset_config(PRESET))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    baseline = git_module(args.baseline, "src/lmlab/train/optim.py")

    def groups():
        return parameter_groups(model.named_parameters(), 0.1)

    ademamix = dict(lr=6e-4, betas=(0.9, 0.999, 0.999), alpha=5.0, t_alpha=5000, t_beta3=5000)
    optimizers = {f"adamw_{kind}": torch.optim.AdamW(groups(), lr=1e-4, **flags) for kind, flags in (
        ("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))}
    optimizers["ademamix_baseline"] = baseline.AdEMAMix(groups(), **ademamix)
    optimizers["ademamix"] = AdEMAMix(groups(), **ademamix)
    variants = {name: optimizer.step for name, optimizer in optimizers.items()}
    for fn in variants.values():  # state allocation
        fn()
    times = best_of(args.rounds, variants)
    print("optim done", file=sys.stderr, flush=True)
    return {"parameters": sum(p.numel() for p in model.parameters()), **times,
            "adamw_fused_speedup_vs_loop": round(times["adamw_loop"]["wall_s"] / times["adamw_fused"]["wall_s"], 2),
            "ademamix_speedup_vs_baseline": round(times["ademamix_baseline"]["wall_s"] / times["ademamix"]["wall_s"],
                                                  2)}


# ---- profile

def profile_section(args, rows: int = 20) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    model, optimizer, context = build_variant("lmlab", None)
    model.train()
    batch = torch.randint(0, preset_config(PRESET).vocab_size, (args.batch, args.seq_len))
    for _ in range(2):
        train_step(model, optimizer, context, batch, "bf16")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        train_step(model, optimizer, context, batch, "bf16")
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count,
             "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
             "percent": round(100 * e.self_cpu_time_total / total, 1)} for e in events[:rows]]


# ---- run_all.py's rows

def rows(quick: bool) -> list[dict]:
    """neollm-110m's step against HF Qwen3-Next (fp32, bf16) and its peak RSS at B 8, T 512 in bf16 (both modes)."""
    batch, seq_len = QUICK_SHAPE if quick else FULL_SHAPE
    args = argparse.Namespace(batch=batch, seq_len=seq_len, rounds=2 if quick else 3, baseline=BASELINE,
                              threads=torch.get_num_threads(), memory_batch=8)
    size = f"B {batch}, T {seq_len}" + (f"; quick size, full: B {FULL_SHAPE[0]}, T {FULL_SHAPE[1]}" if quick else "")
    found = [row(f"neollm-110m vs HF Qwen3-Next, {r['precision']} ({size})", r["lmlab_speedup_vs_hf"], SPEED_TARGET,
                 f"CPU-time ratio {r['cpu_time_ratio_vs_hf']:.2f}; dropout off on both; "
                 + gemm_note(r["hf_gemm_share"], r["lmlab_gemm_share"], "HF model"))
             for r in model_section(args, None, names=("lmlab", "hf_qwen3_next"))]
    memory_row = f"neollm-110m bf16 training peak RSS ≤ {MEMORY_TARGET:g} GiB (B 8, T 512; ratio = " \
                 f"{MEMORY_TARGET:g} GiB / peak)"
    if "bf16" not in timed_precisions():
        return found + [skipped_bf16(f"neollm-110m vs HF Qwen3-Next, bf16 ({size})", SPEED_TARGET),
                        skipped_bf16(memory_row, 1.0)]
    memory = memory_section(argparse.Namespace(**{**vars(args), "seq_len": 512}), names=("lmlab",))["lmlab"]
    peak = memory.get("peak_rss_GiB")
    found.append(row(memory_row, None if peak is None else MEMORY_TARGET / peak, 1.0,
                     f"peak {peak} GiB, preset as published (dropout on), lmlab train's malloc setting"
                     if peak is not None else memory["failed"]))
    return found


# ---- driver

def child(args, *task: str) -> str:
    """Run one measurement in a fresh process (peak RSS is per process); its last output line is the value."""
    command = [sys.executable, __file__, "--threads", str(args.threads), "--seq-len", str(args.seq_len),
               "--baseline", args.baseline, "--memory-batch", str(args.memory_batch), "--child", *task]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ).stdout
    return out.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="*", default=["memory", "kernel", "optim", "model", "profile"])
    parser.add_argument("--batch", type=int, default=2, help="model and profile batch")
    parser.add_argument("--kernel-batch", type=int, nargs="*", default=[2, 8])
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: lmlab's, lmlab.hardware)")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the baseline kernel (before perf-gdn)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = set_threads(args.threads)
    if args.child:
        task, *rest = args.child
        value = kernel_rss_child(args, *rest) if task == "kernel-rss" else memory_child(args, *rest)
        print(value)
        return
    started = os.getloadavg()
    baseline = baseline_module(args.baseline)
    results = {"benchmark": "gdn_step", "machine": machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "baseline": args.baseline,
               "env": {k: os.environ.get(k) for k in ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS")}}
    sections = {"kernel": lambda: kernel_section(args, baseline), "model": lambda: model_section(args, baseline),
                "optim": lambda: optim_section(args),
                "memory": lambda: memory_section(args), "profile": lambda: profile_section(args)}
    for name in args.sections:
        results[name] = sections[name]()
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)  # kept if a later section fails
    results["load_average"] = {"start": started, "end": os.getloadavg()}
    results["caveat"] = "shared, noisy machine: compare ratios from the same run, not absolute times"
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
