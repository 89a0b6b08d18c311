"""Progress bars of the slow data steps (tokenizing a corpus, training a BPE tokenizer): tqdm on stderr, counting
bytes of text."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator


def progress_bar(show: bool, description: str):
    """A tqdm bar on stderr counting bytes of text (a silent one when `show` is False)."""
    from tqdm.auto import tqdm

    return tqdm(desc=description, unit="B", unit_scale=True, disable=not show, file=sys.stderr, leave=False)


def counted(documents: Iterable[str], bar) -> Iterator[str]:
    """`documents`, advancing `bar` by each one's UTF-8 size."""
    for text in documents:
        yield text
        bar.update(len(text.encode("utf-8")))


__all__ = ["counted", "progress_bar"]
