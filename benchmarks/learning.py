"""Learning quality of the `*-tiny` presets at nanoGPT's CPU "baby GPT" budget, scored with nanoGPT's protocol.

Setup: each preset trains with its own recipe (what `lmlab train --preset NAME` runs), bytes tokenizer, on Tiny
Shakespeare (the built-in `shakespeare` corpus) with the last 10% held out, for 1,536,000 training tokens: nanoGPT's
`train_shakespeare_char` CPU run (batch 12 × block 64 × 2000 iterations, 0.80M parameters, 1.886 nats/char at the
end). Count models on the same split: bigram 2.50, trigram 2.05, interpolated 5-gram 1.67.

Score: nanoGPT's `estimate_loss`, but over the *whole* held-out 10% instead of random blocks: bytes [⌊0.9·n⌋, n) of
the file are cut into consecutive blocks of `--block` (64) inputs and their next characters (stride 64); every
position of every block is scored (context lengths 1..64, as in nanoGPT's blocks); the loss is the mean cross-entropy
in nats per character.

Reported per run: val (nats/char), the final training loss, parameters, optimizer steps, CPU seconds of the process
(all threads) and wall seconds, the load average around the run, and the recipe. One JSON document on stdout.

    PYTHONPATH=src python benchmarks/learning.py                                  # every *-tiny preset, 1 thread
    PYTHONPATH=src python benchmarks/learning.py --presets nyx-tiny n4-tiny-rope
    PYTHONPATH=src python benchmarks/learning.py --presets ngen4-tiny --set hidden_size=128 --set num_hidden_layers=4 \\
        --train lr=4e-3 --tokens 3000000 --threads 2 --keep runs/ngen4-d128
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine

from lmlab.data.sources import SHAKESPEARE, ShakespeareCorpus
from lmlab.hardware import set_threads
from lmlab.model import LMLabForCausalLM, count_parameters
from lmlab.presets import list_presets
from lmlab.train import config_from_recipe, train

NANOGPT_TOKENS = 12 * 64 * 2000  # batch 12 × block 64 × 2000 iterations
BLOCK = 64
VAL_FRACTION = 0.1
REFERENCES = {"nanoGPT baby GPT (0.80M params, AdamW 1e-3, 2000 iterations)": 1.886, "bigram counts": 2.50,
              "trigram counts": 2.05, "interpolated 5-gram counts": 1.67}
RECIPE_KEYS = ("seq_len", "batch_size", "grad_accum", "precision", "optimizer", "schedule", "grad_clip")


def corpus_bytes(data: Path | None) -> bytes:
    """The corpus: a file, or the built-in Tiny Shakespeare."""
    return data.read_bytes() if data else next(ShakespeareCorpus().documents()).encode("utf-8")


def heldout(corpus: bytes) -> np.ndarray:
    """nanoGPT's validation split of a byte-level corpus: bytes [⌊0.9·n⌋, n)."""
    data = np.frombuffer(corpus, dtype=np.uint8)
    return data[int(len(data) * (1 - VAL_FRACTION)):].astype(np.int64)


@torch.no_grad()
def loss_by_position(model: torch.nn.Module, tokens: np.ndarray, block: int = BLOCK, batch: int = 64) -> np.ndarray:
    """Mean cross-entropy (nats) at each position 1..block over every block of `block` inputs in `tokens` (stride
    `block`); its mean is nanoGPT's estimate_loss over the whole split."""
    model.eval()
    count = (len(tokens) - 1) // block
    windows = torch.from_numpy(np.stack([tokens[i * block: i * block + block + 1] for i in range(count)]))
    total = torch.zeros(block, dtype=torch.float64)
    for start in range(0, count, batch):
        w = windows[start: start + batch]
        logits = model(input_ids=w[:, :-1]).logits.float()
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none")
        total += ce.double().sum(0)
    return (total / count).numpy()


def parse_value(text: str):
    """A `--train` value: JSON (numbers, true, objects) or else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_preset(preset: str, args, corpus: bytes) -> dict:
    """Train `preset` with its recipe (plus `--set` / `--train`) on the corpus, bytes, last 10% held out; score it."""
    data = SHAKESPEARE if args.data is None else str(args.data)
    options = dict(data=[data], tokenizer="bytes", val_fraction=VAL_FRACTION, tokens=args.tokens, seed=args.seed,
                   model_overrides=args.overrides, eval_batches=1, sample_tokens=0, progress=False,
                   tensorboard=False, log_every=10**9, cache_dir=str(Path(tempfile.gettempdir()) / "lmlab-learning"))
    options.update(args.train)
    config = config_from_recipe(preset, options)
    out = Path(args.keep) / preset if args.keep else Path(tempfile.mkdtemp(prefix=f"learning-{preset}-"))
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
            result = train(config, out, device="cpu", log=lambda *_: None)
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        model = LMLabForCausalLM.from_pretrained(sorted((out / "checkpoints").glob("step-*"))[-1],
                                                 dtype=torch.float32)
        val = float(loss_by_position(model, heldout(corpus), args.block).mean())
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    recipe = config.to_dict()
    return {"preset": preset, "val_nats_per_char": round(val, 4), "train_loss": round(float(result.loss), 4),
            "parameters": count_parameters(model), "steps": result.step, "tokens": args.tokens,
            "cpu_s": round(cpu_s, 1), "wall_s": round(wall_s, 1), "load_average": [load, os.getloadavg()[0]],
            "recipe": {key: recipe[key] for key in RECIPE_KEYS}, "model_overrides": config.model_overrides,
            "train_options": args.train, "checkpoint": str(out) if args.keep else None}


def main() -> None:
    names = [p.name for p in list_presets() if "-tiny" in p.name]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", choices=names, metavar="NAME",
                        default=[name for name in names if name.endswith("-tiny")],
                        help="default: every *-tiny preset; also: " + ", ".join(n for n in names
                                                                                 if not n.endswith("-tiny")))
    parser.add_argument("--data", type=Path, help="a byte-level corpus file (default: the built-in Tiny Shakespeare)")
    parser.add_argument("--tokens", type=int, default=NANOGPT_TOKENS, help="training tokens (default: nanoGPT's)")
    parser.add_argument("--block", type=int, default=BLOCK, help="scoring block (default: nanoGPT's 64)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU seconds count them all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="model override for every preset (as `lmlab train --set`)")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="training option (a TrainConfig field, lr, optimizer_name, warmup_steps, ...; JSON "
                             "values), e.g. --train lr=4e-3 --train seq_len=128")
    parser.add_argument("--keep", help="keep each run in KEEP/PRESET (default: a temporary folder, deleted)")
    args = parser.parse_args()
    if args.data is not None and not args.data.exists():
        parser.error(f"{args.data} not found: pass a byte-level text file or leave --data out")
    if any("=" not in item for item in args.train):
        parser.error("--train takes KEY=VALUE")
    args.train = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.train)}
    set_threads(args.threads)
    corpus = corpus_bytes(args.data)
    runs = [run_preset(name, args, corpus) for name in args.presets]
    print(json.dumps({"benchmark": "learning", "corpus": str(args.data or "built-in Tiny Shakespeare"),
                      "protocol": f"mean cross-entropy over every {args.block}-char block of the last 10%",
                      "tokens": args.tokens, "machine": machine(), "references": REFERENCES, "runs": runs},
                     indent=1))


if __name__ == "__main__":
    main()
