"""The training loop: `train(config, run_dir)` trains one run from scratch or resumes it.

One optimizer step, on each of W processes with accumulation A and micro-batch B:

    for m in 0..A−1:  batch = windows of global slots (m·W + rank)·B … +B of this step   (same set for any W·A)
                      loss_m = model(batch, labels=batch).loss / A;  backward (gradients synced on the last m)
    loss = mean over processes of Σ_m loss_m        → a NaN/inf stops the run here, naming the step
    clip the global gradient norm; optimizer step(s); scheduler step(s)

The data position is one counter (windows drawn so far), so a resumed run draws exactly the batches, and, with the
RNG states restored, computes exactly the losses of an uninterrupted one. Validation reports loss (nats/token),
perplexity and bits per byte (validation nats / (ln 2 · UTF-8 bytes of the text the targets encode)).
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmlab.budget import chinchilla_tokens, steps_for_tokens
from lmlab.config import LMLabConfig
from lmlab.data import (
    PackedWindows,
    ShuffledSampler,
    build_token_file,
    default_cache_dir,
    load_tokenizer,
    open_corpus,
    split_tokens,
)
from lmlab.data.token_cache import cache_key
from lmlab.data.tokenizers import save_tokenizer
from lmlab.errors import TrainingDiverged
from lmlab.hf_compat import enable_activation_checkpointing
from lmlab.model import LMLabForCausalLM, count_parameters
from lmlab.overrides import apply_overrides, model_wide_value
from lmlab.presets import get_preset, preset_config
from lmlab.run_layout import BASE_DIR, CHECKPOINTS
from lmlab.train import distributed as dist_utils
from lmlab.train.checkpoint import (
    TRAIN_CONFIG,
    check_compatible,
    latest_checkpoint,
    load_trainer_state,
    remove_leftovers,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from lmlab.train.config import TrainConfig, model_vocab_size
from lmlab.train.metrics import MetricsLogger
from lmlab.train.optim import build_optimizers
from lmlab.train.schedules import build_schedule, lr_schedulers

SAMPLE_FILE = "samples.txt"


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    loss: float | None
    val: dict | None
    sample: str | None


@dataclass
class Data:
    tokenizer: object
    train: PackedWindows
    val: PackedWindows
    cache_key: str
    meta: dict


def prepare_data(config: TrainConfig, env: dist_utils.Environment, log, tokenizer_spec: str | None = None) -> Data:
    """Tokenizer (`tokenizer_spec`, default config.tokenizer) and token cache (built by the main process, then read
    by every process)."""
    corpus = open_corpus(config.data, config.text_field, config.hf_split, config.max_documents)
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()

    def load():
        tokenizer = load_tokenizer(tokenizer_spec or config.tokenizer, documents=corpus.documents(),
                                   cache_dir=cache_dir, corpus_fingerprint=corpus.fingerprint())
        return tokenizer, build_token_file(corpus, tokenizer, cache_dir, config.tokenizer)

    if env.is_main:
        tokenizer, token_file = load()
    dist_utils.barrier(env)
    if not env.is_main:
        tokenizer, token_file = load()
    meta = token_file.meta
    log(f"data: {meta['corpus']}: {meta['documents']:,} documents, {meta['tokens']:,} tokens "
        f"({'cached' if token_file.reused else 'tokenized now'}: {token_file.path})")
    train_tokens, val_tokens = split_tokens(token_file.tokens(), config.seq_len, config.val_fraction)
    return Data(tokenizer, PackedWindows(train_tokens, config.seq_len), PackedWindows(val_tokens, config.seq_len),
                cache_key(corpus, tokenizer), meta)


def model_config(config: TrainConfig, tokenizer, log=lambda *_: None) -> LMLabConfig:
    """The model config a run trains: the preset's, sized for `tokenizer`, with the run's `--set` overrides."""
    preset = get_preset(config.preset)
    vocab_size, why = model_vocab_size(preset.config.get("vocab_size", 0), preset.recipe.get("tokenizer"),
                                       config.tokenizer, len(tokenizer),
                                       model_wide_value(config.model_overrides, "vocab_size"))
    log(why)
    base = preset_config(config.preset, vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return apply_overrides(base, config.model_overrides)


def build_model(config: TrainConfig, tokenizer, checkpoint: Path | None, log) -> LMLabForCausalLM:
    if checkpoint is not None:
        return LMLabForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    resolved = model_config(config, tokenizer, log)
    torch.manual_seed(config.seed)
    return LMLabForCausalLM(resolved)


def resolve_steps(config: TrainConfig, parameters: int, log) -> int:
    """The budget in optimizer steps: --steps, else --tokens, else a Chinchilla multiple (default 1×)."""
    if config.steps:
        return config.steps
    if config.tokens:
        tokens = config.tokens
        source = f"{tokens:,} tokens"
    else:
        multiple = config.chinchilla or 1.0
        tokens = chinchilla_tokens(parameters, 20.0 * multiple)
        source = f"Chinchilla {multiple:g}× (20 tokens per parameter × {parameters:,} parameters = {tokens:,})"
    steps = steps_for_tokens(tokens, config.batch_size * config.grad_accum * config.world_size, config.seq_len)
    log(f"budget: {source} → {steps:,} steps of {config.tokens_per_step:,} tokens")
    return steps


def autocast_context(config: TrainConfig, device: torch.device):
    if config.precision == "fp32":
        return nullcontext()
    if config.precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast needs a GPU; on a CPU use --precision bf16 (or fp32)")
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class Validator:
    """Fixed validation windows, shared between processes; their UTF-8 byte count is computed once."""

    def __init__(self, windows: PackedWindows, tokenizer, config: TrainConfig, env: dist_utils.Environment):
        count = min(len(windows), config.eval_batches * config.batch_size) if config.eval_batches else len(windows)
        self.indices = list(range(count))
        self.mine = self.indices[env.rank::env.world_size]
        self.windows, self.config, self.env = windows, config, env
        self.bytes = sum(len(tokenizer.decode(windows.window(i)[1:].tolist(), skip_special_tokens=True)
                             .encode("utf-8")) for i in self.indices)

    @torch.no_grad()
    def __call__(self, model) -> dict:
        model.eval()
        nats = torch.zeros((), dtype=torch.float64, device=self.env.device)
        targets = 0
        size = self.config.batch_size
        for start in range(0, len(self.mine), size):
            batch = self.windows.stack(self.mine[start: start + size]).to(self.env.device)
            with autocast_context(self.config, self.env.device):
                loss = model(input_ids=batch, labels=batch).loss
            nats += loss.double() * batch[:, 1:].numel()
            targets += batch[:, 1:].numel()
        model.train()
        total = dist_utils.sum_over_processes(torch.stack([nats, torch.tensor(float(targets), dtype=torch.float64,
                                                                              device=nats.device)]), self.env)
        loss = float(total[0] / total[1])
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)),
                "val_bpb": float(total[0]) / (math.log(2) * max(self.bytes, 1))}


def sample_text(model, tokenizer, prompt_ids: list[int], config: TrainConfig, device: torch.device) -> str:
    """A text sample from lmlab's generation engine (top-k 50, temperature 0.8, stopping at end-of-sequence) with
    its own seeded generator, so sampling never changes the training run's random stream."""
    from lmlab.generate import Generator
    from lmlab.sampling import SamplingOptions

    model = dist_utils.unwrap(model)
    limit = model.config.max_position_embeddings
    new_tokens = config.sample_tokens if limit is None else min(config.sample_tokens, limit - len(prompt_ids))
    options = SamplingOptions(max_new_tokens=max(new_tokens, 1), temperature=0.8, top_k=50, seed=config.seed)
    with autocast_context(config, device):
        completion = Generator(model, tokenizer).generate_ids([prompt_ids], options)[0]
    return tokenizer.decode(prompt_ids, skip_special_tokens=True) + completion.text


def _sample_prompt(config: TrainConfig, tokenizer, data: Data) -> list[int]:
    if config.sample_prompt is not None:
        ids = tokenizer(config.sample_prompt)["input_ids"]
        if ids:
            return ids
    return data.val.window(0)[: max(1, min(16, config.seq_len // 4))].tolist()


class Progress:
    """tqdm bar (loss, lr, tokens/s; ETA from tqdm) when asked for, else a plain line per log interval."""

    def __init__(self, config: TrainConfig, env: dist_utils.Environment, start: int, total: int):
        self.enabled = env.is_main
        self.bar = None
        if self.enabled and config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.total = total

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, eta_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.enabled:
            print(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  "
                  f"eta {eta_s / 60:.1f} min", flush=True)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False, device: str | None = None,
          log=print) -> TrainResult:
    """Train (or, with `resume`, continue) the run in `run_dir`. Works alone or under torchrun."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the trainer shows its own; transformers' save bars would interleave
    run_dir = Path(run_dir)
    env = dist_utils.setup(device)
    config.world_size = env.world_size
    say = log if env.is_main else (lambda *_: None)
    try:
        return _train(config, run_dir, resume, env, say)
    finally:
        dist_utils.teardown(env)


def _train(config: TrainConfig, run_dir: Path, resume: bool, env: dist_utils.Environment, log) -> TrainResult:
    checkpoint = _checkpoint_to_resume(run_dir, resume)
    if config.base is None:
        data = prepare_data(config, env, log)
        model = build_model(config, data.tokenizer, checkpoint, log)
    else:  # a fine-tune: the model and tokenizer come from the base, copied to RUN/base when the run starts
        from lmlab import finetune

        if checkpoint is None:
            finetune.write_base(config, run_dir, env, log)
        data = prepare_data(config, env, log, tokenizer_spec=str(run_dir / BASE_DIR))
        model = finetune.build_model(config, run_dir, checkpoint, log)
    tokenizer = data.tokenizer
    parameters = count_parameters(model)
    if not config.steps:
        config.steps = resolve_steps(config, parameters, log)
    state = None
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        saved = TrainConfig.from_dict(json.loads((checkpoint / TRAIN_CONFIG).read_text()))
        check_compatible({"config": saved.trajectory(), "data": state["data_key"]},
                         {"config": config.trajectory(), "data": data.cache_key}, checkpoint)
        log(f"resuming from {checkpoint} (step {state['step']})")
    log(f"model: {config.preset}, {parameters:,} parameters; {config.steps:,} steps × {config.tokens_per_step:,} "
        f"tokens; {env.world_size} process(es) on {env.device.type}")

    if config.grad_checkpointing:
        enable_activation_checkpointing(model)
    model.to(env.device)
    raw_model = model
    model = dist_utils.wrap(model, env, config.distributed)
    optimizers = build_optimizers(model, config.optimizer)
    schedule = build_schedule(config.schedule, config.peak_lr, config.steps)
    if schedule.warmup_steps > config.steps:
        log(f"warning: warmup ({schedule.warmup_steps} steps) is longer than the run ({config.steps} steps); "
            f"the learning rate ends at {schedule(config.steps - 1):.3g}, below the peak {config.peak_lr:.3g}")
    schedulers = lr_schedulers(optimizers, schedule)
    scaler = torch.amp.GradScaler(env.device.type, enabled=config.precision == "fp16")
    step, samples_seen, elapsed = 0, 0, 0.0
    if state is not None:
        for optimizer, saved_state in zip(optimizers, state["optimizers"], strict=True):
            dist_utils.load_optimizer_state(model, optimizer, saved_state)
        for scheduler, saved_state in zip(schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved_state)
        scaler.load_state_dict(state["scaler"])
        step, samples_seen, elapsed = state["step"], state["samples_seen"], state.get("elapsed_s", 0.0)
    if config.compile:
        model = torch.compile(model)

    sampler = ShuffledSampler(len(data.train), config.seed)
    validator = Validator(data.val, tokenizer, config, env)
    prompt_ids = _sample_prompt(config, tokenizer, data)
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
                if config.lora is not None:  # the adapters, beside links to the frozen base's weights
                    from lmlab.lora import save_lora_checkpoint

                    save_lora_checkpoint(raw_model, folder, run_dir / BASE_DIR)
                else:
                    raw_model.save_pretrained(folder, state_dict=model_state)
                save_tokenizer(tokenizer, folder, raw_model.config.max_position_embeddings or config.seq_len)

            trainer_state = {"step": at_step, "samples_seen": samples_seen, "optimizers": optimizer_states,
                             "schedulers": [s.state_dict() for s in schedulers], "scaler": scaler.state_dict(),
                             "rng": rng, "data_key": data.cache_key, "elapsed_s": elapsed}
            save_checkpoint(run_dir, at_step, write_model, config.to_dict(), trainer_state, config.keep_checkpoints)
        dist_utils.barrier(env)

    if state is not None:
        restore_rng_state(state["rng"][env.rank])
    else:
        torch.manual_seed(config.seed + env.rank)
        np.random.seed(config.seed + env.rank)

    progress = Progress(config, env, step, config.steps)
    autocast = autocast_context(config, env.device)
    parameters_list = [p for p in model.parameters() if p.requires_grad]
    micro, world, accum = config.batch_size, env.world_size, config.grad_accum
    loss_value, val, sample = None, None, None
    model.train()
    window_start, window_tokens = time.perf_counter(), 0
    try:
        while step < config.steps:
            lr = schedulers[0].get_last_lr()[0]
            step_loss = torch.zeros((), device=env.device)
            for m in range(accum):
                slots = sampler.indices(samples_seen + (m * world + env.rank) * micro, micro)
                batch = data.train.stack(slots).to(env.device, non_blocking=True)
                with dist_utils.gradient_sync(model, m == accum - 1), autocast:
                    loss = model(input_ids=batch, labels=batch).loss / accum
                scaler.scale(loss).backward()
                step_loss += loss.detach()
            samples_seen += micro * accum * world
            loss_value = float(dist_utils.mean_over_processes(step_loss, env))
            if not math.isfinite(loss_value):
                last = latest_checkpoint(run_dir)
                raise TrainingDiverged(
                    f"the training loss became {loss_value} at step {step + 1}; stopping. The last good checkpoint "
                    f"is {last if last else 'none (no checkpoint was written yet)'}. Lower the learning rate, "
                    "enable --grad-clip, or use bf16 instead of fp16, then resume or restart")
            for optimizer in optimizers:
                scaler.unscale_(optimizer)
            grad_norm = float(dist_utils.clip_gradients(parameters_list, config.grad_clip))
            for optimizer in optimizers:
                scaler.step(optimizer)
            scaler.update()
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            for scheduler in schedulers:
                scheduler.step()
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
                    with (run_dir / SAMPLE_FILE).open("a") as handle:
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
    remove_leftovers(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if resume and checkpoint is None:
        raise FileNotFoundError(f"--resume: {run_dir} holds no checkpoint to resume from; drop --resume to start "
                                "a new run there")
    if not resume and checkpoint is not None:
        raise ValueError(f"{run_dir} already holds a training run (latest {checkpoint.name}); pass --resume "
                              "to continue it, or choose another --out")
    return checkpoint


__all__ = ["TrainResult", "TrainingDiverged", "model_config", "prepare_data", "sample_text", "train"]
