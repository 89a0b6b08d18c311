"""`lmlab generate --model RUN --prompt TEXT`: continue prompts with a saved model, streaming to the terminal."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lmlab.commands.options import add_model_argument
from lmlab.generation.loading import DTYPE_CHOICES
from lmlab.generation.sampling import SamplingOptions

DEFAULTS = SamplingOptions()


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (see lmlab.generation.sampling)")
    group.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, metavar="N",
                       help=f"(default: {DEFAULTS.max_new_tokens})")
    group.add_argument("--temperature", type=float, default=DEFAULTS.temperature, metavar="T",
                       help=f"0 = greedy (default: {DEFAULTS.temperature})")
    group.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    group.add_argument("--top-k", type=int, default=DEFAULTS.top_k, metavar="K",
                       help=f"0 = off (default: {DEFAULTS.top_k})")
    group.add_argument("--top-p", type=float, default=DEFAULTS.top_p, metavar="P",
                       help=f"1 = off (default: {DEFAULTS.top_p})")
    group.add_argument("--min-p", type=float, default=DEFAULTS.min_p, metavar="P",
                       help=f"0 = off (default: {DEFAULTS.min_p})")
    group.add_argument("--repetition-penalty", type=float, default=DEFAULTS.repetition_penalty, metavar="R",
                       help=f"1 = off (default: {DEFAULTS.repetition_penalty})")
    group.add_argument("--seed", type=int, metavar="N", help="makes sampling reproducible")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop at this text (not printed); repeatable")
    group.add_argument("--stop-id", action="append", type=int, default=[], metavar="ID",
                       help="stop at this token id; repeatable (the end-of-sequence token always stops unless "
                            "--ignore-eos)")
    group.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate text from a saved model",
        description="Continue one or more prompts with a model directory or training run (its newest checkpoint). "
                    "One prompt streams to stdout as it is decoded; several are generated as one batch.")
    add_model_argument(parser, "--checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="prompt text; repeat for a batch")
    source.add_argument("--prompt-file", type=Path, metavar="FILE", help="one prompt per line")
    parser.add_argument("--num-samples", type=int, default=1, metavar="N", help="completions per prompt (default: 1)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available), cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="weights dtype (auto: bfloat16 on a GPU, float32 on CPU)")
    parser.add_argument("--no-echo", action="store_true", help="print only the generated text")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decoding step: seconds to a minute to start, then faster per token "
                             "(worth it for long generations)")
    add_sampling_arguments(parser)
    parser.set_defaults(run=run)


def sampling_options(args: argparse.Namespace, stop_token_ids) -> SamplingOptions:
    return SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=0.0 if args.greedy else args.temperature,
                           top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                           repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
                           stop_token_ids=stop_token_ids)


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt_file is not None:
        if not args.prompt_file.is_file():
            raise FileNotFoundError(f"no such prompt file: {args.prompt_file}")
        prompts = [line for line in args.prompt_file.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"{args.prompt_file} holds no prompts (one per non-empty line)")
    else:
        prompts = args.prompt
    if any(not p for p in prompts):
        raise ValueError("the prompt is empty: give some text to continue")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    return [p for p in prompts for _ in range(args.num_samples)]


def run(args: argparse.Namespace) -> int:
    from lmlab.generation.engine import Generator
    from lmlab.generation.loading import load_model, quiet_progress_bars

    prompts = read_prompts(args)
    quiet_progress_bars()
    model, tokenizer, model_dir = load_model(args.model, args.device, args.dtype)
    generator = Generator(model, tokenizer, compile=args.compile)
    stop_ids = set(args.stop_id) | (set() if args.ignore_eos else generator.default_stop_token_ids())
    options = sampling_options(args, tuple(stop_ids))
    start = time.perf_counter()
    if len(prompts) == 1:
        echo = [] if args.no_echo else [prompts[0]]  # written with the first piece: a refused prompt prints nothing

        def stream(_, piece: str) -> None:
            while echo:
                _write(echo.pop())
            _write(piece)

        completions = generator.generate(prompts, options, on_text=stream)
        stream(0, "\n")
    else:
        completions = generator.generate(prompts, options)
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            print(f"=== {i} " + "=" * 40)
            print(completion.text if args.no_echo else prompt + completion.text)
    seconds = time.perf_counter() - start
    new = sum(len(c.token_ids) for c in completions)
    reasons = ", ".join(sorted({c.finish_reason for c in completions}))
    print(f"[{model_dir}: {new} tokens in {seconds:.2f}s ({new / seconds:.1f} tokens/s) on {model.device}, "
          f"{str(model.dtype).removeprefix('torch.')}{', compiling included' if args.compile else ''}; "
          f"finished: {reasons}]", file=sys.stderr)
    return 0


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
