"""Generation for any lmlab model: prefill, then incremental decoding with the model's own cache.

The engine only needs the model's `new_cache()` and forward (`cache`, `use_cache`, `attention_mask` over past +
current tokens, `position_ids`, `logits_to_keep`), so every architecture decodes through it with whatever state its
layers keep (KV, sliding window, N4's key sum, recurrent and convolution states, smear's previous embedding).

A batch of prompts of different lengths is left-padded: the mask marks the padding, and positions count real tokens
only, so each row decodes exactly as it would alone. Each step feeds one token per row; rows that finish (a stop
token, a stop string, `max_new_tokens`) leave the batch and their cache rows are dropped. The mask buffer is
allocated once for the whole run and each step passes a view of it.

Layers:
- `BatchDecoder`: token ids in, one new token per active row per step out (`use_cache=False` recomputes the whole
  sequence every step: the reference that cached decoding must equal; `compile=True` runs the one-token steps
  through a compiled forward, see lmlab.generation.compiled; otherwise the large CPU weights are pre-packed for
  several rows, or transposed for one where that multiplies faster, see lmlab.generation.packed);
- `Generator`: text in, text out, with streaming (pieces that never split a character) and stop strings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from lmlab.generation.compiled import compiled_decode_step
from lmlab.generation.packed import packed_step
from lmlab.generation.sampling import Sampler, SamplingOptions
from lmlab.generation.streaming import TextStream

FINISH_REASONS = ("stop", "length", "context")


@dataclass
class Completion:
    """One generated row.

    token_ids: the new tokens (a stop token is not included; with a stop string, the tokens up to the one that
    completed it). text: their text, cut before the first stop string (None when decoding tokens only).
    finish_reason: "stop" (stop token or string), "length" (max_new_tokens) or "context" (the model's position
    limit was reached).
    """

    prompt_ids: list[int]
    token_ids: list[int]
    finish_reason: str
    text: str | None = None


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run in eval mode, then restore the model's previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_stop_token_ids(config) -> set[int]:
    eos = config.eos_token_id
    if eos is None:
        return set()
    return {int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _check_token_ids(ids, vocab_size: int, what: str) -> None:
    """Refuse ids outside the model's vocabulary (the embedding would fail, or a stop id would never occur)."""
    outside = sorted(t for t in ids if not 0 <= t < vocab_size)
    if outside:
        raise ValueError(f"{what}: token id {outside[0]} is outside the model's vocabulary of {vocab_size:,} ids "
                         f"(0 to {vocab_size - 1:,}); use the tokenizer saved with the model")


class BatchDecoder:
    """Decodes a batch of token prompts; iterate `steps()` and call `finish(row)` to stop a row early."""

    def __init__(self, model, prompts: list[list[int]], options: SamplingOptions, *, use_cache: bool = True,
                 stop_token_ids: set[int] | None = None, compile: bool = False, sampler: Sampler | None = None):
        """`sampler` chooses each step's tokens from the logits (B, V) (default: `Sampler(options, ...)`); any
        object with `__call__(logits) -> tokens (B,)` and `keep_rows(index)` will do (constrained or forced
        decoding)."""
        if not prompts:
            raise ValueError("no prompts given")
        if compile and not use_cache:
            raise ValueError("compile=True compiles the cached one-token step; it needs use_cache=True")
        vocab = model.config.vocab_size
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {i} is empty: give at least one token")
            _check_token_ids(prompt, vocab, f"prompt {i}")
        self.model = model
        self.options = options
        self.use_cache = use_cache
        self.compile = compile
        self.stop_token_ids = (set(options.stop_token_ids) if options.stop_token_ids is not None
                               else model_stop_token_ids(model.config) if stop_token_ids is None else stop_token_ids)
        _check_token_ids(self.stop_token_ids, vocab, "the stop token ids")
        self.limit = model.config.max_position_embeddings
        width = max(len(p) for p in prompts)
        if self.limit is not None and width > self.limit:
            longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
            raise ValueError(f"prompt {longest} has {width} tokens but the model's context is {self.limit} tokens "
                             "(max_position_embeddings); shorten the prompt")
        self.prompts = prompts
        self.sampler = sampler
        self.generated: list[list[int]] = [[] for _ in prompts]
        self.finish_reason: list[str | None] = [None] * len(prompts)

    def finish(self, row: int, reason: str = "stop") -> None:
        if reason not in FINISH_REASONS:
            raise ValueError(f"unknown finish reason {reason!r}; one of {FINISH_REASONS}")
        if self.finish_reason[row] is None:
            self.finish_reason[row] = reason

    def completions(self) -> list[Completion]:
        return [Completion(prompt, tokens, reason or "length")
                for prompt, tokens, reason in zip(self.prompts, self.generated, self.finish_reason, strict=True)]

    def steps(self) -> Iterator[tuple[list[int], list[int]]]:
        """Yield, per step, the rows that produced a token and those tokens (stop tokens are not yielded)."""
        with eval_mode(self.model):
            yield from self._steps()

    def _steps(self) -> Iterator[tuple[list[int], list[int]]]:
        # inference mode is entered around the tensor work only, never across a yield (the caller's code between
        # steps runs in its own grad mode)
        options, model = self.options, self.model
        if options.max_new_tokens == 0:
            return
        device = model.device
        batch, width = len(self.prompts), max(len(p) for p in self.prompts)
        padded = any(len(p) < width for p in self.prompts)
        rows = list(range(batch))  # original indices of the rows still in the batch
        length = width
        with torch.inference_mode():
            ids = torch.zeros(batch, width + options.max_new_tokens, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            for row, prompt in enumerate(self.prompts):
                ids[row, width - len(prompt):width] = torch.tensor(prompt, dtype=torch.long)
                mask[row, width - len(prompt):] = 1
            positions = mask[:, :width].sum(-1, keepdim=True)  # position of each row's next token
            sampler = self.sampler or Sampler(options, model.config.vocab_size, self.prompts, device)
            cache = model.new_cache() if self.use_cache else None
            out = model(ids[:, :width], attention_mask=mask[:, :width] if padded else None, cache=cache,
                        use_cache=self.use_cache, logits_to_keep=1)
        decode_step = model
        if self.compile:
            # the compiled step cannot check its positions: the last one it will see is checked now
            model.check_positions_up_to(width + max(options.max_new_tokens - 2, -1))
            cache.reserve(width + options.max_new_tokens)  # no buffer grows inside the compiled step
            decode_step = compiled_decode_step(model)
        elif self.use_cache:
            decode_step = packed_step(model)
        for step in range(options.max_new_tokens):
            with torch.inference_mode():
                tokens = sampler(out.logits[:, -1])
            emitted_rows, emitted = [], []
            for row, token in zip(rows, tokens.tolist(), strict=True):
                if token in self.stop_token_ids:
                    self.finish(row, "stop")
                else:
                    self.generated[row].append(token)
                    emitted_rows.append(row)
                    emitted.append(token)
            if emitted_rows:
                yield emitted_rows, emitted  # the caller may finish rows here (stop strings)
            if step + 1 == options.max_new_tokens:
                break
            if self.limit is not None and length + 1 > self.limit:
                for row in rows:
                    self.finish(row, "context")
                break
            keep = [i for i, row in enumerate(rows) if self.finish_reason[row] is None]
            if not keep:
                break
            with torch.inference_mode():
                if cache is None:
                    ids[:, length] = tokens  # the recomputation reads the whole sequence
                length += 1
                if len(keep) < len(rows):
                    index = torch.tensor(keep, device=device)
                    rows = [rows[i] for i in keep]
                    ids, mask, positions, tokens = ids[index], mask[index], positions[index], tokens[index]
                    sampler.keep_rows(index)
                    if cache is not None:
                        cache.batch_select_indices(index)
                current_mask = mask[:, :length] if padded else None
                if cache is not None:
                    out = decode_step(tokens[:, None], attention_mask=current_mask,
                                      position_ids=positions if padded else None, cache=cache, use_cache=True)
                else:
                    out = model(ids[:, :length], attention_mask=current_mask, use_cache=False, logits_to_keep=1)
                positions = positions + 1


def generate_tokens(model, prompts: list[list[int]], options: SamplingOptions | None = None, *,
                    use_cache: bool = True, compile: bool = False) -> list[Completion]:
    """Token-level generation for a batch of token prompts (stop strings need `Generator`)."""
    decoder = BatchDecoder(model, prompts, options or SamplingOptions(), use_cache=use_cache, compile=compile)
    for _ in decoder.steps():
        pass
    return decoder.completions()


class Generator:
    """Text generation with a model and its tokenizer.

    >>> gen = Generator(model, tokenizer)
    >>> gen.generate(["Once upon a time", "The capital of France is"], SamplingOptions(max_new_tokens=20))
    >>> for piece in gen.stream("Once upon a time"): print(piece, end="", flush=True)

    compile=True decodes through a compiled step (lmlab.generation.compiled): slow to start, faster per token.
    """

    def __init__(self, model, tokenizer, add_special_tokens: bool = True, compile: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.compile = compile

    def encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts are strings, got {type(prompt).__name__}")
        if not prompt:
            raise ValueError("the prompt is empty: give some text to continue")
        ids = self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]
        if not ids:
            raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
        return ids

    def default_stop_token_ids(self) -> set[int]:
        """The model's and the tokenizer's end-of-sequence ids."""
        ids = model_stop_token_ids(self.model.config)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def stop_token_ids(self, options: SamplingOptions) -> set[int]:
        return self.default_stop_token_ids() if options.stop_token_ids is None else set(options.stop_token_ids)

    def _events(self, prompt_ids: list[list[int]], options: SamplingOptions, use_cache: bool,
                completions: list[Completion]) -> Iterator[tuple[int, str]]:
        decoder = BatchDecoder(self.model, prompt_ids, options, use_cache=use_cache,
                               stop_token_ids=self.stop_token_ids(options), compile=self.compile)
        streams = [TextStream(self.tokenizer, ids, options.stop) for ids in prompt_ids]
        for rows, tokens in decoder.steps():
            for row, token in zip(rows, tokens, strict=True):
                piece = streams[row].push(token)
                if piece:
                    yield row, piece
                if streams[row].stopped:
                    decoder.finish(row, "stop")
        for row, stream in enumerate(streams):
            piece = stream.finish()
            if piece:
                yield row, piece
        for completion, stream in zip(decoder.completions(), streams, strict=True):
            completion.text = stream.text
            completions.append(completion)

    def generate_ids(self, prompt_ids: list[list[int]], options: SamplingOptions | None = None, *,
                     on_text: Callable[[int, str], None] | None = None, use_cache: bool = True) -> list[Completion]:
        """Complete prompts given as token ids (one batch); `on_text(row, piece)` receives text as it is decoded."""
        completions: list[Completion] = []
        for row, piece in self._events(prompt_ids, options or SamplingOptions(), use_cache, completions):
            if on_text is not None:
                on_text(row, piece)
        return completions

    def generate(self, prompts: str | list[str], options: SamplingOptions | None = None, *,
                 on_text: Callable[[int, str], None] | None = None, use_cache: bool = True) -> list[Completion]:
        """Complete every prompt (one batch); `on_text(row, piece)` receives the text as it is decoded."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.generate_ids([self.encode(p) for p in prompts], options, on_text=on_text, use_cache=use_cache)

    def stream(self, prompt: str, options: SamplingOptions | None = None) -> Iterator[str]:
        """Yield the completion of one prompt piece by piece."""
        for _, piece in self._events([self.encode(prompt)], options or SamplingOptions(), True, []):
            yield piece


__all__ = ["FINISH_REASONS", "BatchDecoder", "Completion", "Generator", "eval_mode", "generate_tokens"]
