"""NYX training-step throughput on this machine, each variant against a reference measured in the same process.

Prints JSON: tokens/s of one forward+backward of nyx-30m (fp32; gradients only, no optimizer step):
- xpos (the preset) vs rope (the same model with plain rotary): the cost of the XPOS scales;
- lora (adapters only trainable, rank 8) vs full: what LoRA saves in the backward pass.
Timings are medians over `--repeats` rounds after one warm-up round, the variants taking
turns; on machines shared with other jobs, ratios hold better than absolute numbers.

    PYTHONPATH=src python benchmarks/nyx_step.py --batch 1 --seq-len 256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from lmlab import LMLabForCausalLM, preset_config
from lmlab.train.lora import apply_lora


def step_seconds(models: dict, ids: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of one forward+backward per model; the models take turns so load changes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(repeats + 1):
        for name, model in models.items():
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (args.batch, args.seq_len))
    tokens = ids.numel()
    models = {
        "xpos": LMLabForCausalLM(preset_config("nyx-30m")),
        "rope": LMLabForCausalLM(preset_config("nyx-30m", position="rope")),
        "lora": apply_lora(LMLabForCausalLM(preset_config("nyx-30m"))),
    }
    for model in models.values():
        model.train()
    seconds = step_seconds(models, ids, args.repeats)
    print(json.dumps({
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "batch": args.batch, "seq_len": args.seq_len,
        "tokens_per_s": {name: round(tokens / s, 1) for name, s in seconds.items()},
        "xpos_over_rope_time": round(seconds["xpos"] / seconds["rope"], 3),
        "lora_over_full_time": round(seconds["lora"] / seconds["xpos"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
