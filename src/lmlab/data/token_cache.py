"""The token cache: a corpus tokenized once into a flat file of token ids, reused by every later run.

Layout under the cache directory (`--cache-dir`, default `$LMLAB_CACHE` or `~/.cache/lmlab`):

    tokens/<key>.bin    the ids of every document, each followed by EOS, as uint16 (vocabularies <= 65,536) or uint32
    tokens/<key>.json   what the file holds: corpus, tokenizer, dtype, counts of documents, tokens and UTF-8 bytes

`key` hashes the corpus fingerprint and the tokenizer fingerprint, so another corpus, another tokenizer or an edited
file gets a new file and a second run with the same ones starts at once. Documents are encoded in batches with the
`tokenizers` library's parallel `encode_batch` (every core), with the tokenizer's own special tokens (Mistral's BOS)
and then EOS, under a progress bar on stderr (bytes of text encoded) when asked for. Files appear atomically
(written under a temporary name, then renamed), so an interrupted run never leaves a truncated cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from lmlab.data.progress import progress_bar
from lmlab.data.sources import Corpus, DataError
from lmlab.data.tokenizers import tokenizer_fingerprint

FORMAT_VERSION = 1
ENCODE_BATCH_CHARS = 1 << 20  # characters handed to one encode_batch call (one progress-bar update)


def default_cache_dir() -> Path:
    if os.environ.get("LMLAB_CACHE"):
        return Path(os.environ["LMLAB_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "lmlab"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class TokenFile:
    """A cached token file. `reused` tells whether this run found it already built."""

    path: Path
    meta: dict
    reused: bool

    def tokens(self) -> np.memmap:
        return np.memmap(self.path, dtype=np.dtype(self.meta["dtype"]), mode="r")


def cache_key(corpus: Corpus, tokenizer: PreTrainedTokenizerFast) -> str:
    payload = json.dumps([FORMAT_VERSION, corpus.fingerprint(), tokenizer_fingerprint(tokenizer)])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _document_ids(encoding_ids: list[int], eos: int) -> list[int]:
    return encoding_ids if encoding_ids and encoding_ids[-1] == eos else [*encoding_ids, eos]


def _write_tokens(corpus: Corpus, tokenizer: PreTrainedTokenizerFast, target, bar) -> dict:
    dtype = token_dtype(len(tokenizer))
    eos = tokenizer.eos_token_id
    counts = {"documents": 0, "tokens": 0, "bytes": 0}
    batch: list[str] = []
    batch_chars = 0

    def flush():
        for encoding in tokenizer.backend_tokenizer.encode_batch(batch, add_special_tokens=True):
            ids = np.asarray(_document_ids(encoding.ids, eos), dtype=dtype)
            ids.tofile(target)
            counts["tokens"] += len(ids)
        batch.clear()
        bar.update(counts["bytes"] - bar.n)

    for text in corpus.documents():
        if not text:
            continue
        batch.append(text)
        batch_chars += len(text)
        counts["documents"] += 1
        counts["bytes"] += len(text.encode("utf-8"))
        if batch_chars >= ENCODE_BATCH_CHARS:
            flush()
            batch_chars = 0
    if batch:
        flush()
    return {**counts, "dtype": dtype.name}


def build_token_file(corpus: Corpus, tokenizer: PreTrainedTokenizerFast, cache_dir: Path,
                     tokenizer_name: str = "", progress: bool = False) -> TokenFile:
    """The token file of `corpus` under `tokenizer`: found in the cache, or built now (then cached), with a
    progress bar when `progress`."""
    key = cache_key(corpus, tokenizer)
    folder = Path(cache_dir) / "tokens"
    path, meta_path = folder / f"{key}.bin", folder / f"{key}.json"
    if path.is_file() and meta_path.is_file():
        return TokenFile(path, json.loads(meta_path.read_text()), reused=True)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f"{key}.bin.tmp-{os.getpid()}"
    try:
        with temporary.open("wb") as target, progress_bar(progress, f"tokenizing {corpus.describe()}") as bar:
            counts = _write_tokens(corpus, tokenizer, target, bar)
            target.flush()
            os.fsync(target.fileno())
        if counts["documents"] == 0:
            raise DataError(f"the corpus ({corpus.describe()}) holds no text: every document is empty. Check "
                            "--data (and --text-field)")
        meta = {"corpus": corpus.describe(), "tokenizer": tokenizer_name, "vocab_size": len(tokenizer),
                "eos_token_id": tokenizer.eos_token_id, **counts}
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    meta_path.with_suffix(".json.tmp").write_text(json.dumps(meta, indent=1))
    meta_path.with_suffix(".json.tmp").replace(meta_path)
    return TokenFile(path, meta, reused=False)


__all__ = ["TokenFile", "build_token_file", "cache_key", "default_cache_dir", "token_dtype"]
