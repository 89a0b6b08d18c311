"""`lmlab eval --model RUN --tasks ...`: perplexity and benchmark tasks (lm-evaluation-harness) for a model."""

from __future__ import annotations

import argparse
import logging

from lmlab.commands.options import add_model_argument
from lmlab.eval.run import DEFAULT_BATCH_SIZE, DEFAULT_BOOTSTRAP_ITERS, SOURCES
from lmlab.eval.scoring import DEFAULT_CONTEXT
from lmlab.generation.loading import DTYPE_CHOICES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a saved model: perplexity, multiple-choice and cloze benchmarks",
        description="Evaluate a model directory or training run. Tasks (comma-separated): lm-eval task names "
                    "(arc_easy, arc_challenge, hellaswag, mmlu, mmlu_<subject>, piqa, winogrande, lambada_openai), "
                    "task YAML files, or perplexity:PATH for any text file. Prints a table and writes JSON to "
                    "<model dir>/eval/results-<time>.json.")
    add_model_argument(parser, "--checkpoint")
    parser.add_argument("--tasks", required=True, metavar="TASK,...", help="comma-separated task specs (see above)")
    parser.add_argument("--num-fewshot", type=int, metavar="K",
                        help="exemplars per prompt (default: 0, or the task's own)")
    parser.add_argument("--limit", type=float, metavar="N",
                        help="rows per task (a fraction if < 1); for quick checks only, not comparable numbers")
    parser.add_argument("--source", choices=SOURCES, default=SOURCES[0],
                        help="local: lmlab's task files and local data, offline (default); hub: lm-eval's tasks of "
                             "the same names with the full splits from the Hugging Face hub")
    parser.add_argument("--data-dir", metavar="DIR", help="folder of the local eval data (default: $LMLAB_EVAL_DATA, "
                                                          "else ../shared/data/eval beside the repository)")
    parser.add_argument("--include", action="append", default=[], metavar="PATH",
                        help="a task YAML file or a folder of them to add; repeatable")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"sequences per forward pass (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--max-length", type=int, metavar="N",
                        help="context length (default: the sequence length the model was trained at when lmlab train "
                             f"recorded it, else its max_position_embeddings, else {DEFAULT_CONTEXT})")
    parser.add_argument("--stride", type=int, metavar="N",
                        help="perplexity window stride (default: half the context length)")
    parser.add_argument("--bootstrap-iters", type=int, default=DEFAULT_BOOTSTRAP_ITERS, metavar="N",
                        help="bootstrap resamples for the standard errors of non-mean metrics (0 = none; default: "
                             f"{DEFAULT_BOOTSTRAP_ITERS})")
    parser.add_argument("--log-samples", action="store_true",
                        help="keep every request and the model's response in the JSON report")
    parser.add_argument("--output", metavar="FILE", help="JSON report path (default: inside the model directory)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available), cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="weights dtype (default: auto, bfloat16 on a GPU, float32 on CPU)")
    parser.add_argument("--verbose", action="store_true", help="show lm-eval's log")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmlab.eval.run import check_run_options, evaluate, format_report, parse_task_specs, report_path, save_report
    from lmlab.generation.loading import load_model, quiet_progress_bars
    from lmlab.run_layout import resolve_model_dir

    check_run_options(args.num_fewshot, args.limit)
    tasks = args.tasks.split(",")
    parse_task_specs(tasks)  # bad specs fail before the model loads
    output = report_path(resolve_model_dir(args.model), args.output)
    if not args.verbose:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        quiet_progress_bars()
    model, tokenizer, model_dir = load_model(args.model, args.device, args.dtype)
    report = evaluate(model, tokenizer, tasks, num_fewshot=args.num_fewshot, limit=args.limit, source=args.source,
                      data_dir=args.data_dir, include=args.include, batch_size=args.batch_size,
                      max_length=args.max_length, stride=args.stride, bootstrap_iters=args.bootstrap_iters,
                      log_samples=args.log_samples)
    report["model_dir"] = str(model_dir)
    print(format_report(report))
    save_report(report, output)
    print(f"results written to {output}")
    return 0
