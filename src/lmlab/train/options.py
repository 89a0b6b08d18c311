"""Every option of a training run, in one table: `lmlab train`, `lmlab finetune` and `lmlab compare` build their
command lines from it, and a comparison writes each run's exact `lmlab train` command from it.

An option's `name` is a `TrainConfig` field or one of the recipe shortcuts `apply_options` understands (`lr`,
`optimizer_name`, `schedule_name`, `warmup_steps`). Choices and defaults are read from the library (the lists of
precisions, optimizers, schedules, tokenizers; `TrainConfig`'s defaults), never restated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from lmlab.data.sources import SHAKESPEARE, STDLIB
from lmlab.data.tokenizers import BUILTIN_TOKENIZERS
from lmlab.train.config import DISTRIBUTED_STRATEGIES, PRECISIONS, RECIPE_KEYS, TrainConfig
from lmlab.train.optim import OPTIMIZERS
from lmlab.train.schedules import SCHEDULES
from lmlab.train.validation import VALIDATION_TOKENS

RECIPE = "the preset's recipe"  # the default shown for options a preset's recipe sets
DATA, BATCH, OPTIMIZATION, BUDGET, LOOP, SYSTEM = ("data", "batch and precision", "optimization", "budget",
                                                   "evaluation, samples, checkpoints, logging", "system")


@dataclass(frozen=True)
class TrainOption:
    """One option. `type` None is an on/off switch whose flag sets `switch`; `repeat` options take a list."""

    name: str
    group: str
    help: str
    type: type | None = str
    choices: tuple | None = None
    flag: str | None = None
    switch: bool = True
    repeat: bool = False
    metavar: str | None = None
    default: str | None = None  # shown in --help; None: TrainConfig's default, or RECIPE for recipe keys
    per_run: bool = False  # set per run by a comparison (its budget, seeds and cadence), not shared by every run

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def shown_default(self) -> str | None:
        if self.default is not None:
            return self.default
        if self.name in RECIPE_KEYS or self.name in ("lr", "optimizer_name", "schedule_name", "warmup_steps"):
            return RECIPE
        value = _CONFIG_DEFAULTS.get(self.name)
        return None if value is None or self.type is None else str(value)


_CONFIG_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not f.default_factory}

TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    TrainOption("data", DATA, f"{STDLIB} | {SHAKESPEARE} | FILE | GLOB | *.jsonl | *.parquet | hf:NAME[:CONFIG]; "
                "repeatable",
                repeat=True, metavar="SOURCE", default=STDLIB),
    TrainOption("text_field", DATA, "jsonl / parquet / hf: field holding the text", metavar="FIELD"),
    TrainOption("hf_split", DATA, "split of an hf: dataset", metavar="SPLIT"),
    TrainOption("max_documents", DATA, "read at most this many documents of an hf: dataset", int),
    TrainOption("tokenizer", DATA, f"{' | '.join(BUILTIN_TOKENIZERS)} | a Hugging Face name or folder",
                metavar="SPEC"),
    TrainOption("val_fraction", DATA, "tail of the token stream held out for validation", float),
    TrainOption("cache_dir", DATA, "token cache", metavar="DIR", default="$LMLAB_CACHE or ~/.cache/lmlab"),
    TrainOption("seq_len", BATCH, "tokens per training window", int),
    TrainOption("batch_size", BATCH, "sequences per micro-batch per process", int),
    TrainOption("grad_accum", BATCH, "micro-batches per optimizer step", int),
    TrainOption("precision", BATCH, "autocast precision; auto: bf16 where the hardware runs it fast (a CPU with "
                "AVX512-BF16 or AMX, a CUDA GPU with bf16), else fp32", choices=PRECISIONS),
    TrainOption("optimizer_name", OPTIMIZATION, "optimizer", choices=OPTIMIZERS, flag="--optimizer"),
    TrainOption("lr", OPTIMIZATION, "peak learning rate", float),
    TrainOption("schedule_name", OPTIMIZATION, "learning-rate schedule", choices=SCHEDULES, flag="--schedule"),
    TrainOption("warmup_steps", OPTIMIZATION, "linear warmup steps", int),
    TrainOption("grad_clip", OPTIMIZATION, "global gradient-norm clip (0: off)", float),
    TrainOption("seed", OPTIMIZATION, "seed of the initialisation, the data order and dropout", int),
    TrainOption("steps", BUDGET, "optimizer steps (the budget: --steps, else --tokens, else --chinchilla; with "
                "--resume a larger budget extends the run)", int, per_run=True),
    TrainOption("tokens", BUDGET, "training tokens", int, per_run=True),
    TrainOption("chinchilla", BUDGET, "multiple of 20 tokens per parameter", float, default="1", per_run=True),
    TrainOption("eval_every", LOOP, "validate every N steps and at the end (0: only at the end)", int, per_run=True),
    TrainOption("eval_batches", LOOP, "validation micro-batches, drawn from all over the split (0: the whole split)",
                int, default=f"the whole split up to {VALIDATION_TOKENS:,} tokens, else a fixed sample of that many",
                per_run=True),
    TrainOption("sample_every", LOOP, "print a text sample every N steps and at the end (0: only at the end)", int,
                per_run=True),
    TrainOption("sample_tokens", LOOP, "tokens per sample (0: no samples)", int, per_run=True),
    TrainOption("sample_prompt", LOOP, "sample prompt", flag="--sample", metavar="TEXT",
                default="the start of the validation text", per_run=True),
    TrainOption("checkpoint_every", LOOP, "checkpoint every N steps and at the end (0: only at the end)", int,
                per_run=True),
    TrainOption("keep_checkpoints", LOOP, "checkpoints kept", int, flag="--keep", per_run=True),
    TrainOption("log_every", LOOP, "metrics every N steps", int, per_run=True),
    TrainOption("progress", LOOP, "plain log lines instead of progress bars (training, tokenizing, BPE training)",
                None, flag="--no-progress", switch=False, per_run=True),
    TrainOption("tensorboard", LOOP, "no TensorBoard logs", None, flag="--no-tensorboard", switch=False,
                per_run=True),
    TrainOption("wandb", LOOP, "also log to Weights & Biases", None, per_run=True),
    TrainOption("compile", SYSTEM, "torch.compile the model (compiling takes minutes on a small CPU, and the tiny "
                "presets' steps measured slower compiled there: benchmarks/train_loop.py)", None),
    TrainOption("grad_checkpointing", SYSTEM, "recompute activations in backward", None),
    TrainOption("distributed", SYSTEM, "strategy under torchrun", choices=DISTRIBUTED_STRATEGIES, per_run=True),
)
OPTIONS_BY_NAME = {option.name: option for option in TRAIN_OPTIONS}


def option_arguments(options: dict) -> list[str]:
    """The command-line arguments that give `options` ({name: value}; None values are left out; `model_overrides`
    becomes --set), so that parsing them gives the same options back."""
    arguments: list[str] = []
    for name, value in options.items():
        if value is None:
            continue
        if name == "model_overrides":
            for override in value:
                arguments += ["--set", override]
            continue
        option = OPTIONS_BY_NAME[name]
        if option.type is None:
            arguments += [option.option] if value == option.switch else []
        elif option.repeat:
            for item in value:
                arguments += [option.option, str(item)]
        else:
            arguments += [option.option, str(value)]
    return arguments


__all__ = ["OPTIONS_BY_NAME", "TRAIN_OPTIONS", "TrainOption", "option_arguments"]
