"""Training data: corpus sources, tokenizers, the token cache and packed batches (one module per job)."""

from lmlab.data.batches import PackedWindows, ShuffledSampler, split_tokens
from lmlab.data.sources import Corpus, DataError, open_corpus
from lmlab.data.token_cache import TokenFile, build_token_file, default_cache_dir
from lmlab.data.tokenizers import TokenizerError, load_tokenizer

__all__ = ["Corpus", "DataError", "PackedWindows", "ShuffledSampler", "TokenFile", "TokenizerError",
           "build_token_file", "default_cache_dir", "load_tokenizer", "open_corpus", "split_tokens"]
