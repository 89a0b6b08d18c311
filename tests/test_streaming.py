"""Incremental detokenisation (multi-byte characters, merged tokens) and stop strings."""

import pytest

from conftest import byte_tokenizer, shared_data
from lmlab.streaming import IncrementalDetokenizer, StopStringCutter, TextStream

TEXTS = ["héllo wörld", "emoji 🙂🙃 and 日本語のテキスト", "  spaces\n\nand\ttabs ", "ascii only"]


def gpt2_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = shared_data("tokenizers", "gpt2")
    bpe = models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe"))
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def stream_pieces(tokenizer, prompt: str, text: str) -> list[str]:
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + text)["input_ids"][len(prompt_ids):]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    pieces = [detokenizer.push(token) for token in ids]
    return [p for p in pieces if p] + [detokenizer.flush()]


@pytest.mark.parametrize("make_tokenizer", [byte_tokenizer, gpt2_tokenizer], ids=["bytes", "gpt2"])
@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_text_and_never_split_a_character(make_tokenizer, text):
    tokenizer = make_tokenizer()
    pieces = stream_pieces(tokenizer, "Prompt:", text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    if make_tokenizer is byte_tokenizer and any(ord(c) > 127 for c in text):
        assert len([p for p in pieces if p]) < len(text.encode())  # multi-byte characters came out whole


def test_an_incomplete_character_is_held_then_flushed():
    tokenizer = byte_tokenizer()
    ids = tokenizer("🙂")["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert [detokenizer.push(t) for t in ids[:3]] == ["", "", ""]
    assert detokenizer.flush() == "\ufffd"  # the sequence ended inside a character


def feed_all(cutter: StopStringCutter, pieces) -> str:
    return "".join(cutter.feed(p) for p in pieces)


def test_stop_string_split_over_pieces_is_cut():
    cutter = StopStringCutter(("\n\n",))
    assert feed_all(cutter, ["Hello", " world\n", "\nignored"]) == "Hello world"
    assert cutter.stopped and cutter.text == "Hello world"
    assert cutter.feed("more") == "" and cutter.flush() == ""


def test_a_possible_stop_prefix_is_held_back_until_decided():
    cutter = StopStringCutter(("STOP",))
    assert cutter.feed("abc ST") == "abc "
    assert cutter.feed("ART") == "START"[:0] + "START"  # "ST" was not the start of STOP after all
    assert cutter.feed(" S") == " "
    assert cutter.flush() == "S"  # the row ended for another reason: release the held tail


def test_earliest_of_several_stop_strings_wins():
    cutter = StopStringCutter(("world", "lo w"))
    assert feed_all(cutter, ["hel", "lo world"]) == "hel"


def test_stop_string_at_the_very_start():
    cutter = StopStringCutter(("Q:",))
    assert feed_all(cutter, ["Q", ": what"]) == ""
    assert cutter.stopped


def test_no_stop_strings_releases_everything():
    cutter = StopStringCutter()
    assert feed_all(cutter, ["a", "b"]) == "ab" and not cutter.stopped


def test_text_stream_combines_detokenizer_and_stop_strings():
    tokenizer = byte_tokenizer()
    stream = TextStream(tokenizer, tokenizer("x")["input_ids"], stops=("ö",))
    out = "".join(stream.push(t) for t in tokenizer("héllo wörld")["input_ids"])
    assert out + stream.finish() == "héllo w"
    assert stream.stopped and stream.text == "héllo w"
