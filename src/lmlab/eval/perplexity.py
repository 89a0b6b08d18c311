"""Perplexity and bits per byte of a text file, with a strided sliding window (as for WikiText-2).

Convention: the whole file is one sequence. Its tokens are prefixed with the tokenizer's BOS token (else its EOS
token), so that the first token is predicted too, and every token is scored exactly once (`strided_windows`): the
first window scores the first `context` tokens; each next window moves by `stride` tokens and scores only those, with
the `context − stride` tokens before them as context. Default stride = context / 2. With stride = context the
windows are disjoint (cheapest, least context); with stride = 1 every token sees a full context (slowest).

    token_perplexity = exp(NLL / tokens)          (depends on the tokenizer)
    word_perplexity  = exp(NLL / words)           (words: whitespace-separated, as lm-eval's wikitext)
    byte_perplexity  = exp(NLL / bytes)           (UTF-8 bytes)
    bits_per_byte    = NLL / (bytes · ln 2)       (tokenizer-independent: compare models with this)

NLL is the summed negative log-likelihood in nats. Without a BOS or EOS token the first token cannot be predicted:
it is left out, and so are its bytes and words from the counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from lmlab.eval.scoring import score_spans, strided_windows


@dataclass
class PerplexityResult:
    file: str
    tokens: int
    bytes: int
    words: int
    nll: float
    context: int
    stride: int
    windows: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words)

    @property
    def byte_perplexity(self) -> float:
        return math.exp(self.nll / self.bytes)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.bytes * math.log(2))

    def metrics(self) -> dict:
        return {**asdict(self), "token_perplexity": self.token_perplexity, "word_perplexity": self.word_perplexity,
                "byte_perplexity": self.byte_perplexity, "bits_per_byte": self.bits_per_byte}


def text_perplexity(model, tokenizer, text: str, context: int, stride: int | None = None,
                    name: str = "<text>") -> PerplexityResult:
    """Score `text` with the strided sliding window of the module docstring."""
    stride = stride or max(context // 2, 1)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    scored_text = text
    if prefix is not None:
        ids = [prefix] + ids
    elif ids:  # the first token is context only: leave its text out of the counts
        scored_text = text[len(tokenizer.decode(ids[:1])):]
    if len(ids) < 2:
        raise ValueError(f"{name} has too little text to score (it encodes to {len(ids)} token(s))")
    windows = strided_windows(len(ids), context, stride)
    scores = score_spans(model, [(ids[start:end], end - first) for start, first, end in windows])
    return PerplexityResult(file=name, tokens=len(ids) - 1, bytes=len(scored_text.encode("utf-8")),
                            words=max(len(scored_text.split()), 1), nll=-sum(lp for lp, _ in scores),
                            context=context, stride=stride, windows=len(windows))


def file_perplexity(model, tokenizer, path: str | Path, context: int, stride: int | None = None) -> PerplexityResult:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such text file: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text_perplexity(model, tokenizer, text, context, stride, name=str(path))


__all__ = ["PerplexityResult", "file_perplexity", "text_perplexity"]
