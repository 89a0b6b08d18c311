"""Incremental detokenisation (multi-byte characters, merged tokens) and stop strings."""

import pytest

from lmlab.data.tokenizers import bytes_tokenizer, gpt2_tokenizer, mistral_tokenizer
from lmlab.generation.streaming import IncrementalDetokenizer, StopStringCutter, TextStream

TEXTS = ["héllo wörld", "emoji 🙂🙃 and 日本語のテキスト", "  spaces\n\nand\ttabs ", "ascii only"]


def stream_pieces(tokenizer, prompt_ids: list[int], ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    pieces = [detokenizer.push(token) for token in ids]
    return [p for p in pieces if p] + [detokenizer.flush()]


TOKENIZERS = {"bytes": bytes_tokenizer, "gpt2": gpt2_tokenizer, "mistral-v3": lambda: mistral_tokenizer("mistral-v3")}


@pytest.mark.parametrize("name", list(TOKENIZERS))
@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_text_and_never_split_a_character(name, text):
    """Byte-level BPE (bytes, GPT-2) splits characters over tokens; SentencePiece (Mistral) has byte fallback and
    decodes a word's leading space from the token before it."""
    tokenizer = TOKENIZERS[name]()
    prompt_ids = tokenizer("Prompt:\n")["input_ids"]
    ids = tokenizer("Prompt:\n" + text)["input_ids"][len(prompt_ids):]
    expected = tokenizer.decode(prompt_ids + ids, skip_special_tokens=True)[len("Prompt:\n"):]
    pieces = stream_pieces(tokenizer, prompt_ids, ids)
    assert "".join(pieces) == expected
    assert expected.strip() == text.strip()
    assert all("\ufffd" not in piece for piece in pieces)
    if name == "bytes" and any(ord(c) > 127 for c in text):
        assert len([p for p in pieces if p]) < len(text.encode())  # multi-byte characters came out whole


def test_invalid_bytes_do_not_stall_the_stream():
    """The bytes tokenizer decodes a run holding an invalid byte as U+FFFD throughout: released after 4 tokens."""
    tokenizer = bytes_tokenizer()
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(token) for token in [0xC3, *tokenizer("abcdefgh")["input_ids"]]]
    assert pieces[:4] == ["", "", "", "\ufffd" * 4]  # held while it could be a character, then released
    assert "".join(pieces[4:]) == "defgh"  # the text after it comes through clean, token by token


def test_an_incomplete_character_is_held_then_flushed():
    tokenizer = bytes_tokenizer()
    ids = tokenizer("🙂")["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert [detokenizer.push(t) for t in ids[:3]] == ["", "", ""]
    assert set(detokenizer.flush()) == {"\ufffd"}  # the sequence ended inside a character


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
    tokenizer = bytes_tokenizer()
    stream = TextStream(tokenizer, tokenizer("x")["input_ids"], stops=("ö",))
    out = "".join(stream.push(t) for t in tokenizer("héllo wörld")["input_ids"])
    assert out + stream.finish() == "héllo w"
    assert stream.stopped and stream.text == "héllo w"
