"""The training loop: `run_training(config, source, run_dir)` trains one run from scratch or resumes it.

Each optimizer step (`lmlab.train.step.train_step`), on each of W processes with accumulation A and micro-batch B,
reads the windows of global slots (m·W + rank)·B … +B for micro-batch m (the same set for any W·A). The data
position is one counter (windows drawn so far), so a resumed run draws exactly the batches, and, with the RNG states
restored, computes exactly the losses of an uninterrupted one. The model comes from a `ModelSource` (a preset, or a
fine-tune's base): the loop knows nothing of either.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmlab.data import ShuffledSampler
from lmlab.data.tokenizers import save_tokenizer
from lmlab.errors import TrainingDiverged
from lmlab.hf_compat import enable_activation_checkpointing
from lmlab.model import count_parameters
from lmlab.model_files import check_model_dir
from lmlab.run_layout import CHECKPOINTS, SAMPLES_FILE, TRAIN_CONFIG
from lmlab.train import distributed as dist_utils
from lmlab.train.budget import resolve_steps
from lmlab.train.checkpoint import (
    check_compatible,
    checkpoint_config,
    latest_checkpoint,
    load_trainer_state,
    remove_leftovers,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from lmlab.train.config import TrainConfig
from lmlab.train.data import prepare_data
from lmlab.train.divergence import diverged_message
from lmlab.train.extension import continued_schedule_steps, run_schedule
from lmlab.train.metrics import MetricsLogger
from lmlab.train.model_source import ModelSource
from lmlab.train.progress import Progress, sample_prompt, sample_text
from lmlab.train.step import resolve_precision, step_parts, train_step
from lmlab.train.validation import Validator

# how a resume names the data fingerprint (lmlab.data.token_cache.cache_key) when it differs
DATA_KEY = "data (corpus files, sizes and modification times, and tokenizer)"


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    loss: float | None
    val: dict | None
    sample: str | None


def run_training(config: TrainConfig, source: ModelSource, run_dir: str | Path, resume: bool = False,
                 device: str | None = None, log=print) -> TrainResult:
    """Train (or, with `resume`, continue) the run in `run_dir` on the model `source` gives. Works alone or under
    torchrun."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the trainer shows its own; transformers' save bars would interleave
    run_dir = Path(run_dir)
    env = dist_utils.setup(device)
    config.world_size = env.world_size
    say = log if env.is_main else (lambda *_: None)
    try:
        return _train(config, source, run_dir, resume, env, say)
    finally:
        dist_utils.teardown(env)


def _train(config: TrainConfig, source: ModelSource, run_dir: Path, resume: bool, env: dist_utils.Environment,
           log) -> TrainResult:
    checkpoint = _checkpoint_to_resume(run_dir, resume)
    state = saved = None
    if checkpoint is None:
        source.start(run_dir, env, log)
    else:
        state = load_trainer_state(checkpoint)
        saved = TrainConfig.from_dict(checkpoint_config(checkpoint))
    data = prepare_data(config, env, log, tokenizer_spec=source.tokenizer_spec(run_dir))
    model = source.build(data.tokenizer, run_dir, checkpoint, log)
    config.precision, why = resolve_precision(config.precision, env.device, getattr(model.config, "hidden_size", None))
    log(f"precision: {config.precision} ({why}); {torch.get_num_threads()} torch thread(s)")
    tokenizer = data.tokenizer
    parameters = count_parameters(model)
    if config.steps is None:
        config.steps = resolve_steps(config, parameters, log)
    if checkpoint is not None:
        check_compatible({"config": saved.trajectory(), DATA_KEY: state["data_key"]},
                         {"config": config.trajectory(), DATA_KEY: data.cache_key}, checkpoint)
        config.schedule_steps = continued_schedule_steps(saved, config, state["step"], checkpoint, log)
        log(f"resuming from {checkpoint} (step {state['step']})")
    log(f"model: {config.preset}, {parameters:,} parameters; {config.steps:,} steps × {config.tokens_per_step:,} "
        f"tokens; {env.world_size} process(es) on {env.device.type}")

    if config.grad_checkpointing:
        enable_activation_checkpointing(model)
    model.to(env.device)
    raw_model = model
    model = dist_utils.wrap(model, env, config.distributed)
    schedule = run_schedule(config)
    if schedule.warmup_steps > config.steps:
        log(f"warning: warmup ({schedule.warmup_steps} steps) is longer than the run ({config.steps} steps); "
            f"the learning rate ends at {schedule(config.steps - 1):.3g}, below the peak {config.peak_lr:.3g}")
    parts = step_parts(model, config, schedule, env.device)
    optimizers = parts.optimizers
    step, samples_seen, elapsed = 0, 0, 0.0
    if state is not None:
        for optimizer, saved_state in zip(optimizers, state["optimizers"], strict=True):
            dist_utils.load_optimizer_state(model, optimizer, saved_state)
        for scheduler, saved_state in zip(parts.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved_state)
        parts.scaler.load_state_dict(state["scaler"])
        step, samples_seen, elapsed = state["step"], state["samples_seen"], state.get("elapsed_s", 0.0)
    if config.compile:
        model = torch.compile(model)

    sampler = ShuffledSampler(len(data.train), config.seed)
    validator = Validator(data.val, tokenizer, config, env)
    prompt_ids = sample_prompt(config, tokenizer, data.val)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / TRAIN_CONFIG).write_text(json.dumps(config.to_dict(), indent=1))
    metrics = MetricsLogger(run_dir, env.is_main, resume_step=step, tensorboard=config.tensorboard,
                            wandb=config.wandb, run_config=config.to_dict())

    def save(at_step: int) -> None:
        model_state = dist_utils.full_model_state(model) if dist_utils.is_sharded(raw_model) else None
        optimizer_states = [dist_utils.full_optimizer_state(model, o) for o in optimizers]
        rng = dist_utils.gather_objects(rng_state(), env)
        if env.is_main:
            def write_model(folder: Path) -> None:
                source.save(raw_model, folder, run_dir, model_state)
                save_tokenizer(tokenizer, folder, raw_model.config.max_position_embeddings or config.seq_len)

            trainer_state = {"step": at_step, "samples_seen": samples_seen, "optimizers": optimizer_states,
                             "schedulers": [s.state_dict() for s in parts.schedulers],
                             "scaler": parts.scaler.state_dict(), "rng": rng, "data_key": data.cache_key,
                             "elapsed_s": elapsed}
            save_checkpoint(run_dir, at_step, write_model, config.to_dict(), trainer_state, config.keep_checkpoints)
        dist_utils.barrier(env)

    if state is not None:
        restore_rng_state(state["rng"][env.rank])
    else:
        torch.manual_seed(config.seed + env.rank)
        np.random.seed(config.seed + env.rank)

    progress = Progress(config.progress, env, step, config.steps)
    micro, world, accum = config.batch_size, env.world_size, config.grad_accum

    def micro_batches(first: int):
        for m in range(accum):
            slots = sampler.indices(first + (m * world + env.rank) * micro, micro)
            yield data.train.stack(slots).to(env.device, non_blocking=True)

    loss_value, val, sample = None, None, None
    model.train()
    window_start, window_tokens = time.perf_counter(), 0
    try:
        compiling = config.compile
        while step < config.steps:
            lr = parts.schedulers[0].get_last_lr()[0]
            try:
                step_start = time.perf_counter()
                loss_value, grad_norm = train_step(model, micro_batches(samples_seen), accum, parts, env)
                if compiling:
                    progress.write(f"torch.compile: the first step took {time.perf_counter() - step_start:.1f} s "
                                   "(compiling included)")
                    compiling = False
            except TrainingDiverged as err:
                raise TrainingDiverged(diverged_message(str(err), step + 1, run_dir)) from None
            samples_seen += micro * accum * world
            step += 1
            window_tokens += config.tokens_per_step

            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                elapsed += now - window_start
                rate = window_tokens / max(now - window_start, 1e-9)
                window_start, window_tokens = now, 0
                metrics.log(step, loss=loss_value, lr=lr, grad_norm=grad_norm, tokens=step * config.tokens_per_step,
                            tokens_per_s=rate, elapsed_s=elapsed)
                progress.update(step, loss_value, lr, rate, (config.steps - step) * config.tokens_per_step / rate)
            final = step == config.steps
            trained_until = time.perf_counter()
            evaluate = (config.eval_every and step % config.eval_every == 0) or final
            write_sample = (config.sample_every and step % config.sample_every == 0) or (final and config.sample_tokens)
            checkpoint = (config.checkpoint_every and step % config.checkpoint_every == 0) or final
            if evaluate:
                val = validator(model)
                metrics.log(step, **val)
                progress.write(f"step {step}: val loss {val['val_loss']:.4f}, ppl {val['val_ppl']:.2f}, "
                               f"{val['val_bpb']:.4f} bits/byte")
            if write_sample:
                sample = sample_text(model, tokenizer, prompt_ids, config, env.device)
                metrics.log(step, sample=sample)
                progress.write(f"--- sample at step {step} ---\n{sample}\n---")
                if env.is_main:
                    with (run_dir / SAMPLES_FILE).open("a") as handle:
                        handle.write(f"--- step {step} ---\n{sample}\n")
            if checkpoint:
                save(step)
            if evaluate or write_sample or checkpoint:  # elapsed_s and tokens/s count training steps only
                window_start += time.perf_counter() - trained_until
    finally:
        progress.close()
        metrics.close()
    log(f"done: {step} steps; checkpoint {run_dir / CHECKPOINTS}")
    return TrainResult(run_dir, step, loss_value, val, sample)


def _checkpoint_to_resume(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint a run resumes from (complete, its weights fitting its config), None for a new run."""
    remove_leftovers(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if resume and checkpoint is None:
        raise FileNotFoundError(f"--resume: {run_dir} holds no checkpoint to resume from; drop --resume to start "
                                "a new run there")
    if not resume and checkpoint is not None:
        raise ValueError(f"{run_dir} already holds a training run (latest {checkpoint.name}); pass --resume "
                              "to continue it, or choose another --out")
    if checkpoint is not None:
        check_model_dir(checkpoint)
    return checkpoint


__all__ = ["TrainResult", "run_training"]
