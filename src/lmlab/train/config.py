"""What one training run does: `TrainConfig`, built from a preset's recipe plus command-line overrides.

Precedence: an explicit option beats the preset's recipe, which beats lmlab's defaults. The resolved config is
written to RUN/train_config.json and into every checkpoint; `--resume` refuses a checkpoint whose *trajectory* keys
(everything that changes which numbers the run computes: model, tokenizer, batch, optimizer, schedule, seed, world
size) differ, and names them. The data is compared by its fingerprint (files, sizes, modification times: the same
file named another way is the same data); the budget may grow (lmlab.train.extension). Logging, evaluation,
sampling and checkpoint cadence may change freely.

Data paths are stored absolute (`--data corpus.txt` becomes /where/it/was/corpus.txt; globs too), so a run resumes
from any working directory.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import asdict, dataclass, field, fields

from lmlab.data.sources import absolute_spec
from lmlab.errors import ConfigError, DataError
from lmlab.overrides import normalize_overrides
from lmlab.presets import get_preset

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 where the device runs it fast, else fp32
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp")
VOCAB_MULTIPLE = 64

# keys that may differ between a checkpoint and the run resuming it
FREE_KEYS = frozenset({
    "eval_every", "eval_batches", "sample_every", "sample_tokens", "sample_prompt", "checkpoint_every",
    "keep_checkpoints", "log_every", "compile", "progress", "wandb", "tensorboard", "cache_dir",
})
BUDGET_KEYS = ("steps", "tokens", "chinchilla")  # one budget: giving one replaces the others
# keys a resume checks in its own way: the data by its fingerprint, the budget and schedule span by the extension rule
RESUME_CHECKED_KEYS = frozenset({"data", *BUDGET_KEYS, "schedule_steps"})


@dataclass
class TrainConfig:
    preset: str
    data: list[str] = field(default_factory=lambda: ["stdlib"])
    text_field: str = "text"
    hf_split: str = "train"
    max_documents: int | None = None
    tokenizer: str = "bytes"
    # `--set` overrides of the preset's model config (lmlab.overrides); a {key: value} mapping is accepted and stored
    # as the equivalent strings
    model_overrides: list[str] = field(default_factory=list)
    # batch
    seq_len: int = 256
    batch_size: int = 8
    grad_accum: int = 1
    world_size: int = 1
    precision: str = "auto"  # resolved to fp32 / bf16 when the run starts (lmlab.train.step.resolve_precision)
    # optimisation
    optimizer: dict = field(default_factory=lambda: {"name": "adamw", "lr": 3e-4})
    schedule: dict = field(default_factory=lambda: {"name": "cosine", "warmup_steps": 0})
    grad_clip: float | None = 1.0
    steps: int | None = None  # the budget: steps, else tokens, else a Chinchilla multiple (20 tokens per parameter)
    tokens: int | None = None
    chinchilla: float | None = None
    # the steps the learning-rate schedule spans (None: `steps`); an extended run may keep its old span, after which
    # the learning rate holds the schedule's final value (lmlab.train.extension)
    schedule_steps: int | None = None
    seed: int = 1337
    val_fraction: float = 0.05
    distributed: str = "ddp"
    grad_checkpointing: bool = False
    # fine-tuning (`lmlab finetune`): start from a trained model instead of a fresh preset model
    base: str | None = None  # the model the run starts from (copied once to RUN/base; see lmlab.train.finetune)
    lora: dict | None = None  # LoRA settings (rank, alpha, targets, dropout): only adapters train; None = every weight
    # cadence and outputs (free to change on resume)
    eval_every: int = 0
    eval_batches: int | None = None  # None: the whole split up to VALIDATION_TOKENS, else a spread sample of that size
    sample_every: int = 0
    sample_tokens: int = 64
    sample_prompt: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    log_every: int = 1
    compile: bool = False
    progress: bool = True
    tensorboard: bool = True
    wandb: bool = False
    cache_dir: str | None = None

    def __post_init__(self):
        self.model_overrides = normalize_overrides(self.model_overrides)
        self.data = [absolute_spec(spec) for spec in self.data]
        for name in BUDGET_KEYS:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name} must be positive, got {value}: give a budget above 0 (lmlab train "
                                  "without one trains 20 tokens per parameter, Chinchilla's rule)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.distributed not in DISTRIBUTED_STRATEGIES:
            raise ValueError(f"distributed must be one of {list(DISTRIBUTED_STRATEGIES)}, got {self.distributed!r}")
        for name in ("seq_len", "batch_size", "grad_accum", "world_size", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError("seq_len must be at least 2 (one input and one target)")
        if self.lora is not None and self.base is None:
            raise ValueError("lora needs a base model to adapt: set base (lmlab finetune --model MODEL --lora)")
        if self.lora is not None and self.distributed == "fsdp":
            raise ValueError("LoRA fine-tuning runs under DDP, not FSDP (only the small adapters train); use "
                             "--distributed ddp")

    @property
    def peak_lr(self) -> float:
        return float(self.optimizer["lr"])

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size * self.seq_len

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as the JSON file holds them

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def trajectory(self) -> dict:
        """The keys a resumed run must share with its checkpoint as they are (see the module docstring)."""
        return {k: v for k, v in self.to_dict().items() if k not in FREE_KEYS | RESUME_CHECKED_KEYS}


RECIPE_KEYS = ("tokenizer", "seq_len", "batch_size", "grad_accum", "precision", "optimizer", "schedule",
               "grad_clip", "chinchilla")


def config_from_recipe(preset: str, options: dict) -> TrainConfig:
    """The run's config: lmlab defaults, then the preset's recipe, then `options` (None values are ignored)."""
    recipe = get_preset(preset).recipe
    return apply_options({"preset": preset, **{key: recipe[key] for key in RECIPE_KEYS if key in recipe}}, options)


def apply_options(values: dict, overrides: dict) -> TrainConfig:
    """`values` (a recipe or a saved config) with the training options `overrides` applied (model overrides are
    the `model_overrides` field, applied by lmlab.overrides). Besides TrainConfig fields, overrides may hold
    `lr` (the peak learning rate), `optimizer_name` (another optimizer keeps only lr, weight_decay and no_decay),
    `schedule_name` and `warmup_steps`, merged into the optimizer and schedule dicts. A `grad_clip` of 0 is off. A
    budget (`steps`, `tokens` or `chinchilla`) in `overrides` replaces the one in `values`."""
    values = dict(values)
    values["optimizer"] = dict(values.get("optimizer") or {"name": "adamw", "lr": 3e-4})
    values["schedule"] = dict(values.get("schedule") or {"name": "cosine", "warmup_steps": 0})
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if any(key in overrides for key in BUDGET_KEYS):
        values.update(dict.fromkeys(BUDGET_KEYS))
    name = overrides.pop("optimizer_name", None)
    if name is not None and name != values["optimizer"].get("name"):
        kept = {k: v for k, v in values["optimizer"].items() if k in ("lr", "weight_decay", "no_decay")}
        values["optimizer"] = {"name": name, **kept}
    if "lr" in overrides:
        values["optimizer"]["lr"] = overrides.pop("lr")
    if "schedule_name" in overrides:
        values["schedule"]["name"] = overrides.pop("schedule_name")
    if "warmup_steps" in overrides:
        values["schedule"]["warmup_steps"] = overrides.pop("warmup_steps")
    if overrides.get("grad_clip") == 0:
        overrides["grad_clip"] = None
        values["grad_clip"] = None
    values.update(overrides)
    return TrainConfig.from_dict(values)


def run_config(preset: str | None, out: str | None, resume: bool, options: dict) -> tuple[TrainConfig, str]:
    """The config and directory of `lmlab train`: a preset's recipe with `options` applied (run directory
    runs/PRESET unless `out` names one), or, resuming without a preset, the config saved in `out`'s newest
    checkpoint with `options` applied (a changed trajectory key is then refused by name when the run starts).
    Resuming keeps the run's budget unless `options` give one (then the run is extended: lmlab.train.extension).
    Model overrides are checked now, before any data is read."""
    from lmlab.overrides import apply_overrides
    from lmlab.presets import preset_config

    if preset is None and not resume:
        raise ValueError("give --preset NAME (see `lmlab info --list`), or --resume --out RUN")
    if preset is None and not out:
        raise ValueError("--resume needs --out RUN (the run directory to continue)")
    out = out or f"runs/{preset}"
    saved = _saved_config(out) if resume else None
    if saved is not None and all(options.get(key) is None for key in BUDGET_KEYS):
        options = {**options, "steps": saved["steps"]}
    if preset is None:
        if saved is None:
            raise FileNotFoundError(f"--resume: {out} holds no checkpoint")
        if options.get("data") is None:
            _check_recorded_data(saved.get("data") or [], out)
        return apply_options(saved, options), out
    config = config_from_recipe(preset, options)
    check_seq_len(config.seq_len, apply_overrides(preset_config(config.preset), config.model_overrides))
    return config, out


def _saved_config(run_dir: str) -> dict | None:
    """The TrainConfig values of the run's newest checkpoint, None when it has none."""
    from lmlab.train.checkpoint import checkpoint_config, latest_checkpoint

    checkpoint = latest_checkpoint(run_dir)
    return None if checkpoint is None else checkpoint_config(checkpoint)


def check_seq_len(seq_len: int, model_config) -> None:
    """Refuse training windows longer than the model's position limit (before any data is read)."""
    limit = model_config.max_position_embeddings
    if limit is not None and seq_len > limit:
        raise ConfigError(f"--seq-len {seq_len} is longer than the model's position limit (max_position_embeddings="
                          f"{limit}); use --seq-len {limit} or less, or raise the limit (--set "
                          "max_position_embeddings=N; RoPE models may also need rope_scaling)")


def _check_recorded_data(specs: list[str], out: str) -> None:
    """Older lmlab versions recorded `--data` paths as typed: a relative one that names nothing from this working
    directory is refused with the way out (the directory it was relative to was not recorded)."""
    for spec in specs:
        here = absolute_spec(spec)
        if here != spec and not glob.glob(here):
            raise DataError(f"{out} was started by an older lmlab, which recorded --data {spec!r} relative to the "
                            f"directory the run was started in; from here it names {here}, which does not exist. "
                            "Resume from that directory, or pass --data with the file's absolute path (the same "
                            "file continues the same run)")


def padded_vocab_size(tokenizer_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    return int(math.ceil(tokenizer_size / multiple) * multiple)


def model_vocab_size(preset_vocab: int, recipe_tokenizer: str | None, tokenizer_spec: str, tokenizer_size: int,
                     override: int | None = None) -> tuple[int, str]:
    """The model's vocab_size for this tokenizer, and a log line explaining it.

    Rule: an explicit vocab_size wins; a preset trained with its own published tokenizer keeps its published
    vocab_size (e.g. yatgpt's 32,768 rows for Mistral's 32,000 pieces); any other tokenizer gets its own size
    rounded up to a multiple of 64 (fast matmuls; the extra rows are never targets)."""
    if override is not None:
        size, why = override, "set explicitly"
    elif tokenizer_spec == recipe_tokenizer:
        size, why = preset_vocab, f"the preset's published size for {tokenizer_spec}"
    else:
        size = padded_vocab_size(tokenizer_size)
        why = f"the tokenizer's {tokenizer_size:,} ids rounded up to a multiple of {VOCAB_MULTIPLE}"
    if size < tokenizer_size:
        raise ValueError(f"vocab_size {size:,} is smaller than tokenizer {tokenizer_spec!r} ({tokenizer_size:,} ids); "
                         "token ids would fall outside the embedding table — drop the vocab_size override or use "
                         "a larger one")
    return size, f"vocab_size {size:,}: {why}"


__all__ = ["BUDGET_KEYS", "DISTRIBUTED_STRATEGIES", "FREE_KEYS", "PRECISIONS", "RECIPE_KEYS", "TrainConfig",
           "apply_options", "check_seq_len", "config_from_recipe", "model_vocab_size", "padded_vocab_size",
           "run_config"]
