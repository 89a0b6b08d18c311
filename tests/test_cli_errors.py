"""How the command line ends a verb that fails: bad input in one line (exit 2), a bug in one line that says so
(exit 1) with the traceback behind --debug / LMLAB_DEBUG=1, an interruption in one line (exit 130)."""

from __future__ import annotations

import pytest

import lmlab.commands.info
from lmlab.cli import main
from lmlab.errors import DataError


def failing(error: BaseException):
    def run(args):
        raise error
    return run


@pytest.mark.parametrize("error,code,line", [
    (DataError("corpus.txt holds no text; check --data"), 2, "lmlab info: error: corpus.txt holds no text; check "
                                                             "--data"),
    (FileNotFoundError(2, "No such file or directory", "x.json"), 2, "lmlab info: error: [Errno 2] No such file"),
    (KeyError("layers"), 1, "lmlab info: internal error, a bug in lmlab (KeyError: 'layers'); run it again with "
                            "--debug (or LMLAB_DEBUG=1) for the traceback, and report it"),
    (KeyboardInterrupt(), 130, "lmlab info: interrupted"),
])
def test_a_failing_verb_ends_in_one_line(error, code, line, monkeypatch, capsys):
    monkeypatch.delenv("LMLAB_DEBUG", raising=False)
    monkeypatch.setattr(lmlab.commands.info, "run", failing(error))
    assert main(["info", "--list"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line), err


def test_debug_shows_the_traceback_of_a_bug(monkeypatch):
    monkeypatch.setattr(lmlab.commands.info, "run", failing(KeyError("layers")))
    with pytest.raises(KeyError):
        main(["info", "--list", "--debug"])
    monkeypatch.setenv("LMLAB_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["info", "--list"])
