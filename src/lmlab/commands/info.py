"""`lmlab info`: list presets, or show one model's parameter counts and forward FLOPs per token, or (--explain) the
forward it assembles."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from lmlab.commands.options import add_model_argument, add_override_arguments, model_overrides
from lmlab.config import LMLabConfig
from lmlab.explain import explain
from lmlab.info import describe, parameter_counts
from lmlab.model import LMLabForCausalLM
from lmlab.overrides import apply_overrides
from lmlab.presets import get_preset, list_presets, preset_config
from lmlab.run_layout import resolve_model_dir


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="list presets or describe one model",
                                   description="List presets, or print a preset's or a saved model's parameter "
                                               "counts and forward FLOPs per token.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--list", action="store_true", help="list every preset")
    source.add_argument("--preset", metavar="NAME", help="a preset name (see --list)")
    add_model_argument(source, None, required=False)
    parser.add_argument("--seq-len", type=int, metavar="N",
                        help="sequence length for FLOPs (default: the preset's training length, else 512)")
    add_override_arguments(parser)
    parser.add_argument("--explain", action="store_true",
                        help="print the forward the config assembles, block by block, instead of the counts")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def _millions(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f}M)"


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args.json)
    if args.preset:
        config = preset_config(args.preset)
        seq_len = args.seq_len or get_preset(args.preset).recipe.get("seq_len", 512)
    else:
        config = LMLabConfig.from_pretrained(resolve_model_dir(args.model))
        seq_len = args.seq_len or config.max_position_embeddings or 512
    overrides = model_overrides(args)
    if overrides:
        config = apply_overrides(config, overrides)
    if args.explain:
        print("\n".join(explain(config)))
        return 0
    facts = describe(config, seq_len)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    counts = facts["parameters"]
    print(f"model: {args.preset or args.model}")
    print(f"  parameters, total:          {_millions(counts['total'])}")
    print(f"  embedding tables:           {_millions(counts['embedding'])}")
    if counts["head"]:
        print(f"  output head (untied):       {_millions(counts['head'])}")
    print(f"  non-embedding:              {_millions(counts['non_embedding'])}")
    print(f"  forward FLOPs per token:    {facts['forward_flops_per_token'] / 1e6:,.1f} MFLOP at sequence length "
          f"{seq_len}")
    print("  parameters by component:")
    width = max(len(row["component"]) for row in facts["components"])
    for row in facts["components"]:
        each = f"x {row['each']:>11,}" if row["each"] is not None else "modules      "
        print(f"    {row['component']:<{width}}  {row['modules']:>3} {each} = {row['parameters']:>12,}")
    kinds = Counter((layer["block"], layer["mixer"], layer["mlp"], layer["norm"]) for layer in facts["layers"])
    for (block, mixer, mlp, norm), count in kinds.items():
        print(f"  {count} x layer: block={block} mixer={mixer} mlp={mlp} norm={norm}")
    return 0


def _list(as_json: bool) -> int:
    rows = []
    for preset in list_presets():
        with torch.device("meta"):
            model = LMLabForCausalLM(preset_config(preset.name))
        rows.append({"name": preset.name, "family": preset.family, "parameters": parameter_counts(model).total,
                     "description": preset.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['parameters'] / 1e6:>8.2f}M  {r['description']}")
    return 0
