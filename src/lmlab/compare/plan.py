"""The plan of a comparison: every variant × seed as one training run with its exact options.

What the user asked for (`Request`: variants, budget, seeds, shared training options) is turned into runs once and
written to OUT/compare.json before the first step. Running the same command again (or `lmlab compare --out OUT`
alone) reuses that plan: finished runs are skipped, a half-trained one resumes from its checkpoint, and a seconds
budget is not re-timed. A different request for the same OUT is refused, naming what changed.

Fairness: every run of a comparison shares the data, tokenizer, sequence length, batch, precision and validation
split (SHARED_KEYS; a variant's preset recipe may not differ there unless the command line sets the key), so with
the same seed every variant draws the same windows in the same order (the sampler depends only on the data, the
sequence length and the seed) and is validated on the same windows. Runs go seed by seed, variants taking turns,
so a change in machine load over time spreads over the variants instead of landing on one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from lmlab.compare.budget import Budget, measure_step_seconds, steps_in, train_budget
from lmlab.compare.variants import Variant
from lmlab.data.tokenizers import atomic_write_text
from lmlab.info import describe
from lmlab.overrides import OverrideError, apply_overrides
from lmlab.presets import preset_config
from lmlab.run_layout import PLAN_FILE, RUNS_DIR
from lmlab.train import distributed as dist_utils
from lmlab.train.config import TrainConfig, config_from_recipe
from lmlab.train.data import prepare_data
from lmlab.train.model_source import model_config
from lmlab.train.options import option_arguments

SHARED_KEYS = ("data", "text_field", "hf_split", "max_documents", "tokenizer", "seq_len", "batch_size", "grad_accum",
               "precision", "val_fraction")
EVALS_PER_RUN = 10  # validation points per run when --eval-every is not given (the curves' resolution)
CHECKPOINTS_PER_RUN = 10  # checkpoints per run when --checkpoint-every is not given (how much a crash can lose)
# options every compare run gets: per-step losses (the smoothed loss needs every step), no samples or TensorBoard
# (the report has the plots), only the newest checkpoint kept
RUN_DEFAULTS = {"log_every": 1, "sample_tokens": 0, "tensorboard": False, "keep_checkpoints": 1}
DEFAULT_SEED = next(f.default for f in fields(TrainConfig) if f.name == "seed")


@dataclass
class Request:
    """What a comparison was asked to do; two invocations with equal requests are the same comparison."""

    variants: list[Variant]
    budget: Budget
    seeds: list[int]
    options: dict = field(default_factory=dict)  # training options for every run (`lmlab train` option names)
    model_overrides: list[str] = field(default_factory=list)  # applied to every variant, before its own
    eval_every: int | None = None
    eval_batches: int | None = None
    checkpoint_every: int | None = None

    def as_dict(self) -> dict:
        values = asdict(self)
        values["budget"] = str(self.budget)
        values["options"] = {k: v for k, v in self.options.items() if v is not None}
        return json.loads(json.dumps(values))


@dataclass
class PlannedRun:
    variant: str
    preset: str
    seed: int
    run_dir: str  # relative to the compare's OUT
    options: dict  # the `lmlab train` options of this run (budget, seed and cadence included)

    def config(self, extra: dict | None = None) -> TrainConfig:
        return config_from_recipe(self.preset, {**self.options, **(extra or {})})


@dataclass
class Plan:
    request: dict
    runs: list[PlannedRun]
    facts: dict  # per variant: parameters, FLOPs per token, steps, tokens (and the step time of a seconds budget)
    command: str | None = None  # the `lmlab compare` command line that made the plan

    def save(self, out: Path) -> None:
        atomic_write_text(Path(out) / PLAN_FILE, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, out: Path) -> Plan | None:
        path = Path(out) / PLAN_FILE
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        return cls(values["request"], [PlannedRun(**r) for r in values["runs"]], values["facts"], values["command"])


def differences(saved: dict, new: dict) -> list[str]:
    return [f"{key}: {saved.get(key)!r} before, {new.get(key)!r} now" for key in sorted(set(saved) | set(new))
            if saved.get(key) != new.get(key)]


def variant_options(request: Request, variant: Variant) -> dict:
    """The training options of `variant` (before the budget, seed and cadence are known)."""
    return {**request.options, **variant.train, **RUN_DEFAULTS,
            "model_overrides": [*request.model_overrides, *variant.overrides]}


def _check_overrides(variant: Variant, overrides: list[str]) -> None:
    try:
        apply_overrides(preset_config(variant.preset), overrides)
    except OverrideError as err:
        raise OverrideError(f"variant {variant.name!r}: {err}") from None


def _check_shared(configs: dict[str, TrainConfig]) -> None:
    """Every variant's run must share SHARED_KEYS (the data order and the validation windows depend on them)."""
    for key in SHARED_KEYS:
        values = {name: getattr(config, key) for name, config in configs.items()}
        if len({json.dumps(v) for v in values.values()}) > 1:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"the variants' presets disagree on {key} ({values}); a comparison needs one value for "
                             f"every variant: give it on the command line ({flag} ...)")


def make_plan(request: Request, log=print, device: str | None = None, command: str | None = None,
              extra: dict | None = None) -> Plan:
    """Resolve `request` into runs: read the data once (tokenizer, token cache), count each variant's parameters
    and FLOPs per token, turn the budget into steps (timing each variant's step for a seconds budget). `extra`:
    options of this invocation only (cache_dir, progress)."""
    configs: dict[str, TrainConfig] = {}
    for variant in request.variants:
        options = variant_options(request, variant)
        _check_overrides(variant, options["model_overrides"])
        configs[variant.name] = config_from_recipe(variant.preset,
                                                   {**options, "seed": request.seeds[0], **(extra or {})})
    _check_shared(configs)
    first = next(iter(configs.values()))
    env = dist_utils.setup(device)
    data = prepare_data(first, env, log)
    log(f"compare: {len(data.train):,} training windows of {first.seq_len} tokens")

    facts, runs = {}, []
    for variant in request.variants:
        config = configs[variant.name]
        resolved = model_config(config, data.tokenizer)
        described = describe(resolved, config.seq_len)
        forward = described["forward_flops_per_token"]
        step_seconds = None
        if request.budget.kind == "seconds":
            step_seconds = measure_step_seconds(config, resolved, env)
            log(f"compare: {variant.name}: one optimizer step takes {step_seconds:.3g} s here (median of 5)")
        steps = steps_in(request.budget, config.tokens_per_step, forward, step_seconds)
        facts[variant.name] = {**described["parameters"], "forward_flops_per_token": forward,
                               "steps": steps, "tokens": steps * config.tokens_per_step,
                               "epochs": steps * config.batch_size * config.grad_accum / len(data.train),
                               "step_seconds": step_seconds, "vocab_size": resolved.vocab_size}
        cadence = {"eval_every": request.eval_every or max(1, steps // EVALS_PER_RUN),
                   "eval_batches": request.eval_batches,
                   "checkpoint_every": request.checkpoint_every or max(1, steps // CHECKPOINTS_PER_RUN)}
        for seed in request.seeds:
            options = {**variant_options(request, variant), **train_budget(request.budget, forward, steps), **cadence,
                       "seed": seed}
            runs.append(PlannedRun(variant.name, variant.preset, seed, f"{RUNS_DIR}/{variant.slug}/seed-{seed}",
                                   {k: v for k, v in options.items() if v is not None}))
    order = {name: i for i, name in enumerate(configs)}
    runs.sort(key=lambda run: (request.seeds.index(run.seed), order[run.variant]))  # seed-major: variants alternate
    return Plan(request.as_dict(), runs, facts, command)


def load_or_make_plan(out: Path, request: Request | None, log=print, device: str | None = None,
                      command: str | None = None, extra: dict | None = None) -> Plan:
    """The plan saved in `out` (which must match `request` when one is given), else a new one, saved."""
    saved = Plan.load(out)
    if saved is not None:
        if request is not None and saved.request != request.as_dict():
            changed = "; ".join(differences(saved.request, request.as_dict()))
            raise ValueError(f"{out} holds a different comparison ({changed}); repeat its command to resume it "
                             f"(or run `lmlab compare --out {out}`), or choose another --out")
        log(f"compare: resuming the comparison in {out}")
        return saved
    if request is None:
        raise FileNotFoundError(f"{out} holds no comparison ({PLAN_FILE}); give VARIANTs and --budget to start one")
    plan = make_plan(request, log, device, command, extra)
    plan.save(out)
    return plan


def train_command(run: PlannedRun, out: Path, extra: dict | None = None, device: str | None = None) -> list[str]:
    """The `lmlab train` arguments that reproduce `run` exactly (written from the library's table of training
    options, as `lmlab train` reads them); `extra` holds options of this invocation (cache_dir, progress)."""
    args = ["lmlab", "train", "--preset", run.preset, *option_arguments({**run.options, **(extra or {})})]
    args += ["--out", str(Path(out) / run.run_dir)]
    return args + (["--device", device] if device else [])
