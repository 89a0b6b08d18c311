"""`lmlab convert FAMILY SRC OUT_DIR`: turn a published checkpoint (a state_dict file, or a Hugging Face model folder
for the families in FOLDER_CONVERTERS) into an lmlab model directory."""

from __future__ import annotations

import argparse

from lmlab.convert import CONVERTERS, FOLDER_CONVERTERS, convert_model_folder, read_state_dict


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a published checkpoint to an lmlab model directory",
        description="Read an official state_dict (.safetensors, or .bin/.pt loaded with weights_only=True), map its "
                    "keys to lmlab's, load it strictly (any missing or unexpected key is an error) and save a "
                    "model directory that AutoModelForCausalLM.from_pretrained loads. "
                    f"{', '.join(FOLDER_CONVERTERS.names())} read a Hugging Face model folder (config.json + "
                    "safetensors, as save_pretrained writes it), map its config (refusing, by name, options lmlab "
                    "cannot reproduce) and copy its tokenizer files.")
    parser.add_argument("family", choices=CONVERTERS.names() + FOLDER_CONVERTERS.names(),
                        help="which published layout SRC is in")
    parser.add_argument("src", help=f"checkpoint file ({', '.join(FOLDER_CONVERTERS.names())}: model folder)")
    parser.add_argument("out_dir", help="output model directory")
    parser.add_argument("--heads", type=int, default=8, help="ngen4 only: attention heads (default 8)")
    parser.add_argument("--max-positions", type=int, default=512, help="ngen4 only: position limit (default 512)")
    parser.add_argument("--mlp", choices=("gelu", "relu2"),
                        help="yatgpt only: the MLP of a checkpoint with a Linear c_fc (its tensors cannot tell GELU "
                             "from ReLU²); YatNMN checkpoints need nothing")
    parser.add_argument("--seq-len", type=int,
                        help="yatgpt only: training length, which sets the sliding windows (default: read off the "
                             "rope buffers when stored, else 1024)")
    parser.add_argument("--xpos-scale-base", type=float, default=512.0,
                        help="nyx only: XPOS scale base, not stored in checkpoints (default 512, NYX's)")
    parser.set_defaults(run=run)


def _family_options(args: argparse.Namespace) -> dict:
    if args.family == "ngen4":
        return {"num_heads": args.heads, "max_position_embeddings": args.max_positions}
    if args.family == "yatgpt":
        return {"mlp": args.mlp, "sequence_len": args.seq_len}
    if args.family == "nyx":
        return {"xpos_scale_base": args.xpos_scale_base}
    return {}


def run(args: argparse.Namespace) -> int:
    if args.family in FOLDER_CONVERTERS:
        converted = convert_model_folder(args.family, args.src, args.out_dir)
        print(f"converted {args.src} into {args.out_dir} ({converted.parameters:,} parameters, "
              f"{converted.tokenizer_files} tokenizer files copied)")
        return 0
    state = read_state_dict(args.src)
    model = CONVERTERS[args.family](state, **_family_options(args))
    model.save_pretrained(args.out_dir)
    print(f"converted {len(state)} tensors from {args.src} into {args.out_dir} "
          f"({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0
