"""Text that grows one token at a time: incremental detokenisation and stop strings.

A token is not always a whole piece of text: byte-level BPE splits a multi-byte character over several tokens, and
SentencePiece decodes a word's leading space differently at the start of a sequence. `IncrementalDetokenizer`
therefore decodes a short window of tokens (a few already released ones as context, plus the new ones) and releases
the new characters only once they no longer end in an incomplete character (U+FFFD) — the method of vLLM and TGI.

`StopStringCutter` releases text up to, and never including, the first stop string; the tail that could still be
the beginning of a stop string is held back until the next piece decides it.
"""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"
CONTEXT_TOKENS = 5  # prompt tokens decoded with the first generated ones so merges and leading spaces come out right
MAX_CHARACTER_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so it never spans more tokens than that


class IncrementalDetokenizer:
    """Releases the text of generated tokens piece by piece; the pieces join to the text of all of them."""

    def __init__(self, tokenizer, prompt_ids: list[int] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens = list(prompt_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0  # start of the decoded window
        self.read_offset = len(self.tokens)  # tokens before this are released

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=self.skip_special_tokens)

    def _new_text(self) -> str:
        released = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        window = self._decode(self.tokens[self.prefix_offset:])
        return window[len(released):] if len(window) > len(released) else ""

    def push(self, token: int) -> str:
        """Add one token; return the text it completes ("" while a character is still incomplete).

        Text still ending in U+FFFD after more new tokens than a character can span holds invalid bytes, not an
        incomplete character: it is released as it is, and the next window starts after it (some decoders turn a
        whole run of bytes into U+FFFD around one invalid byte), so the stream never stalls."""
        self.tokens.append(token)
        piece = self._new_text()
        invalid = piece.endswith(REPLACEMENT_CHAR)
        if not piece or (invalid and len(self.tokens) - self.read_offset < MAX_CHARACTER_TOKENS):
            return ""
        self.prefix_offset, self.read_offset = (len(self.tokens) if invalid else self.read_offset), len(self.tokens)
        return piece

    def flush(self) -> str:
        """The text still held back (an incomplete final character comes out as U+FFFD)."""
        piece = self._new_text()
        self.prefix_offset = self.read_offset = len(self.tokens)
        return piece


class StopStringCutter:
    """Releases text up to the first occurrence of any stop string, which is cut off with everything after it."""

    def __init__(self, stops: tuple[str, ...] = ()):
        self.stops = tuple(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.released = 0
        self.stopped = False

    def _held_back(self) -> int:
        """Length of the longest unreleased tail that is a proper prefix of a stop string."""
        for size in range(min(self.longest - 1, len(self.text) - self.released), 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0

    def feed(self, piece: str) -> str:
        """Add text; return what can be released. After a stop string, `stopped` is True and nothing more comes."""
        if self.stopped or not piece:
            return ""
        search_from = max(self.released, len(self.text) - self.longest + 1, 0)
        self.text += piece
        hits = [i for i in (self.text.find(stop, search_from) for stop in self.stops) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        """Release everything held back (the row ended for another reason)."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        piece = self.text[self.released:end]
        self.released = max(self.released, end)
        return piece


class TextStream:
    """The text of one generated row: tokens in, released pieces out, stop strings applied."""

    def __init__(self, tokenizer, prompt_ids: list[int], stops: tuple[str, ...] = ()):
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.cutter = StopStringCutter(stops)

    @property
    def stopped(self) -> bool:
        return self.cutter.stopped

    @property
    def text(self) -> str:
        return self.cutter.text

    def push(self, token: int) -> str:
        return self.cutter.feed(self.detokenizer.push(token))

    def finish(self) -> str:
        piece = self.cutter.feed(self.detokenizer.flush())
        return piece + self.cutter.flush() if not self.cutter.stopped else piece


__all__ = ["IncrementalDetokenizer", "StopStringCutter", "TextStream"]
