"""A run's data: its tokenizer, token cache and the training / validation windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmlab.data import (
    PackedWindows,
    build_token_file,
    default_cache_dir,
    load_tokenizer,
    open_corpus,
    split_tokens,
)
from lmlab.data.token_cache import cache_key
from lmlab.train import distributed as dist_utils


@dataclass
class Data:
    tokenizer: object
    train: PackedWindows
    val: PackedWindows
    cache_key: str
    meta: dict


def prepare_data(config, env: dist_utils.Environment, log, tokenizer_spec: str | None = None) -> Data:
    """Tokenizer (`tokenizer_spec`, default config.tokenizer) and token cache (built by the main process, then read
    by every process) of a run's TrainConfig; progress bars for the slow steps with `config.progress`."""
    corpus = open_corpus(config.data, config.text_field, config.hf_split, config.max_documents)
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()

    def load():
        tokenizer = load_tokenizer(tokenizer_spec or config.tokenizer, documents=corpus.documents(),
                                   cache_dir=cache_dir, corpus_fingerprint=corpus.fingerprint(),
                                   progress=config.progress)
        return tokenizer, build_token_file(corpus, tokenizer, cache_dir, config.tokenizer, config.progress)

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


__all__ = ["Data", "prepare_data"]
