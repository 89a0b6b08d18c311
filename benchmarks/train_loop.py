"""The trainer against a raw step loop of the same model, and whether its speed choices pay where they are made.

Rows:
  loop overhead      `lmlab train` (lmlab.train.train: data, metrics, progress, checkpoint at the end) against a raw
                     loop (batch, forward with labels, backward, clip, optimizer step, zero_grad) of the same model,
                     batch and optimizer: steady-state tokens/s, steps after the first two (target ≥ 0.95)
  bf16 pays          the trainer's step under bf16 autocast against fp32 (target ≥ 1 where `--precision auto`
                     picks bf16; reported elsewhere: auto keeps models narrower than 256 in fp32 on a CPU)
  --compile          torch.compile'd model against eager, steady state, compile time in the note (reported: lmlab
                     never compiles unless asked; full runs only: compiling takes minutes)
  threads            one torch thread against two on this machine now (reported)
  auto's loss        validation loss after N steps in fp32 over the same in bf16, each tiny recipe (bytes
                     tokenizer, built-in corpus; target ≥ 0.99: bf16 learns at least as well, within 1%)

    PYTHONPATH=src python benchmarks/train_loop.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import NO_FAST_BF16, best_of, machine, machine_line, print_table, row, skipped_bf16, timed_precisions

from lmlab import LMLabConfig, LMLabForCausalLM, preset_config
from lmlab.hardware import keep_freed_memory, set_threads
from lmlab.train import config_from_recipe, train
from lmlab.train import distributed as dist_utils
from lmlab.train.metrics import read_metrics
from lmlab.train.optim import build_optimizers
from lmlab.train.schedules import build_schedule
from lmlab.train.step import autocast_context, resolve_precision, step_parts, train_step

TINY = "ngen4-tiny"
QUIET = dict(tokenizer="bytes", progress=False, tensorboard=False, sample_tokens=0, eval_batches=4, log_every=1)


def trained(preset: str, steps: int, out: Path, **options):
    """A short `lmlab train` run of a preset's recipe (bytes tokenizer, built-in corpus); its metrics."""
    config = config_from_recipe(preset, {**QUIET, "steps": steps, **options})
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's plain progress lines
        result = train(config, out, log=lambda *_: None)
    return config, result, read_metrics(out)


def loop_overhead(steps: int, rounds: int, folder: Path) -> dict:
    """Steady-state seconds per step of `lmlab train` and of a raw loop of the same model and batch."""
    best = {"lmlab train": float("inf"), "raw loop": float("inf")}
    for r in range(rounds):
        config, result, metrics = trained(TINY, steps, folder / f"run{r}")
        elapsed = {m["step"]: m["elapsed_s"] for m in metrics if "elapsed_s" in m}
        best["lmlab train"] = min(best["lmlab train"], (elapsed[steps] - elapsed[2]) / (steps - 2))
        model_config = LMLabConfig.from_pretrained(next((result.run_dir / "checkpoints").glob("step-*")))
        best["raw loop"] = min(best["raw loop"], raw_loop_seconds(model_config, config, steps))
    return best


def raw_loop_seconds(model_config, config, steps: int) -> float:
    """Seconds per step, after the first two, of the plain loop a user would write."""
    torch.manual_seed(config.seed)
    model = LMLabForCausalLM(model_config).train()
    optimizers = build_optimizers(model, config.optimizer)  # Muon recipes: Muon and AdamW
    precision = resolve_precision(config.precision, torch.device("cpu"), model_config.hidden_size)[0]
    data = torch.randint(0, model_config.vocab_size, (steps, config.batch_size, config.seq_len))
    for step in range(steps):
        if step == 2:
            start = time.perf_counter()
        with autocast_context(precision, torch.device("cpu")):
            loss = model(input_ids=data[step], labels=data[step]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"))
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / (steps - 2)


def step_variants(preset: str, variants: dict, vocab: int = 256) -> dict:
    """Callables running the trainer's step on the preset's recipe batch, one per {name: TrainConfig options}."""
    functions = {}
    for name, options in variants.items():
        config = config_from_recipe(preset, {"tokenizer": "bytes", **options})
        width = preset_config(preset).hidden_size
        config.precision = resolve_precision(config.precision, torch.device("cpu"), width)[0]
        torch.manual_seed(0)
        model = LMLabForCausalLM(preset_config(preset, vocab_size=vocab, bos_token_id=None, eos_token_id=None,
                                               pad_token_id=None)).train()
        parts = step_parts(model, config, build_schedule(config.schedule, config.peak_lr, 10**9), torch.device("cpu"))
        batch = torch.randint(0, vocab, (config.batch_size, config.seq_len))
        if options.get("compile"):
            model = torch.compile(model)
        functions[name] = (lambda m=model, p=parts, b=batch: train_step(m, [b], 1, p, dist_utils.Environment()))
    return functions


def timed_first(functions: dict) -> dict:
    """Run each once (warm-up; compiling happens here); the seconds each took."""
    first = {}
    for name, fn in functions.items():
        start = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - start
    return first


def measure(quick: bool) -> dict:
    rounds = 2 if quick else 3
    results: dict = {"machine": machine()}
    results["auto"] = {}
    with tempfile.TemporaryDirectory() as folder:
        results["loop_overhead"] = loop_overhead(12 if quick else 30, rounds, Path(folder))
        presets = [TINY] if quick else [TINY, "n4-tiny", "nyx-tiny", "llama-tiny"]
        results["precision"] = {}
        for preset in presets:
            functions = step_variants(preset, {p: {"precision": p} for p in timed_precisions()})
            results["auto"][preset] = resolve_precision("auto", torch.device("cpu"), preset_config(preset).hidden_size)
            timed_first(functions)
            results["precision"][preset] = best_of(rounds, functions)
        if not quick:  # compiling takes minutes on a small CPU
            functions = step_variants(TINY, {"eager": {}, "compiled": {"compile": True}})
            results["compile_first_step_s"] = timed_first(functions)
            results["compile"] = best_of(rounds, functions)
        (step,) = step_variants(TINY, {"step": {}}).values()
        threads = torch.get_num_threads()
        results["threads"] = best_of(rounds, {n: (lambda n=n: (torch.set_num_threads(n), step())) for n in (1, 2)})
        torch.set_num_threads(threads)
        steps = 100 if quick else 300
        results["auto_loss"] = {}
        for preset in ([TINY] if quick else [TINY, "n4-tiny", "nyx-tiny"]) if "bf16" in timed_precisions() else []:
            losses = {p: trained(preset, steps, Path(folder) / f"{preset}-{p}", precision=p)[1].val["val_loss"]
                      for p in ("fp32", "bf16")}
            results["auto_loss"][preset] = {"steps": steps, **losses}
    return results


def table_rows(results: dict) -> list[dict]:
    loop = results["loop_overhead"]
    rows = [row(f"lmlab train vs raw step loop ({TINY})", loop["raw loop"] / loop["lmlab train"], 0.95)]
    for preset, best in results["precision"].items():
        chosen, why = results["auto"][preset]
        ratio = best["fp32"]["wall_s"] / best["bf16"]["wall_s"] if "bf16" in best else None
        rows.append(row(f"bf16 vs fp32 step, {preset} recipe", ratio, 1.0 if chosen == "bf16" else None,
                        f"auto chooses {chosen} ({why})" + ("" if ratio else "; bf16 " + NO_FAST_BF16)))
    if "compile" in results:
        compile_time = results["compile_first_step_s"]["compiled"] - results["compile_first_step_s"]["eager"]
        rows.append(row(f"--compile vs eager step ({TINY})",
                        results["compile"]["eager"]["wall_s"] / results["compile"]["compiled"]["wall_s"], None,
                        f"compile time {compile_time:.0f} s; not chosen unless asked"))
    rows.append(row(f"2 vs 1 torch threads ({TINY} step, load {results['machine']['load_average']:.1f})",
                    results["threads"][1]["wall_s"] / results["threads"][2]["wall_s"], None,
                    "default: idle physical cores (lmlab.hardware)"))
    if not results["auto_loss"]:
        rows.append(skipped_bf16(f"fp32 / bf16 val loss, {TINY} recipe", 0.99))
    for preset, r in results["auto_loss"].items():
        rows.append(row(f"fp32 / bf16 val loss, {preset} recipe, {r['steps']} steps", r["fp32"] / r["bf16"], 0.99,
                        f"fp32 {r['fp32']:.4f}, bf16 {r['bf16']:.4f}"))
    return rows


def rows(quick: bool) -> list[dict]:
    """run_all.py's interface."""
    return table_rows(measure(quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, presets and rounds")
    parser.add_argument("--threads", type=int, help="torch threads (default: lmlab's, lmlab.hardware)")
    args = parser.parse_args()
    set_threads(args.threads)
    keep_freed_memory()
    results = measure(args.quick)
    print(json.dumps(results, indent=1, default=str))
    print(machine_line(results["machine"]), file=sys.stderr)
    print_table(table_rows(results), file=sys.stderr)


if __name__ == "__main__":
    main()
