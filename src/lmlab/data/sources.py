"""Corpus sources: where training text comes from.

A corpus is an ordered sequence of documents (strings). `--data` accepts, possibly repeated:

    stdlib                 the built-in default corpus (below): exists on every machine, no download
    shakespeare            built in too: Tiny Shakespeare (1.1 MB of plays, public domain; data/corpora/README.md)
    PATH or GLOB           text files, one document per file (UTF-8)
    *.jsonl                one JSON object per line; the document is the `--text-field` value (default "text")
    *.parquet              one row per document; the `--text-field` column
    hf:NAME[:CONFIG]       a Hugging Face dataset (streamed), split `--hf-split`, the `--text-field` column

The built-in corpus is the running Python's standard-library sources (`sysconfig.get_paths()["stdlib"]`, ~12 MB of
real, varied text: code, docstrings, comments): every machine that runs lmlab has it, so the README's first command
works offline. Files are the `*.py` files in sorted relative-path order, skipping `site-packages`, test suites
(`test`, `tests`, `idle_test` directories: test data holds deliberately odd bytes) and any file that is not valid
UTF-8. Its content depends on the Python version, so the token cache keys it by version and file list.

`shakespeare` is karpathy/char-rnn's Tiny Shakespeare, shipped gzipped inside the package and read as one
document: small, English, and learnable by a tiny model in minutes on a CPU (nanoGPT's "baby GPT" corpus).

Every source has a `fingerprint()` that changes when its content may have changed (path, size and modification
time of files; name, config and split of a Hugging Face dataset), which keys the token cache.
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import importlib.resources
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lmlab.errors import DataError
from lmlab.hub import hub_unavailable

STDLIB = "stdlib"
SHAKESPEARE = "shakespeare"
SHAKESPEARE_FILE = ("corpora", "shakespeare.txt.gz")  # package data of lmlab.data
HF_PREFIX = "hf:"
DEFAULT_TEXT_FIELD = "text"
STDLIB_SKIP_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamp(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); convert it to UTF-8 or leave "
                        "it out of --data") from None


@dataclass(frozen=True)
class TextFiles:
    """Plain text files, one document per file."""

    paths: tuple[Path, ...]

    def documents(self) -> Iterator[str]:
        for path in self.paths:
            yield _read_utf8(path)

    def fingerprint(self) -> str:
        return _digest("text", [_file_stamp(p) for p in self.paths])

    def describe(self) -> str:
        return f"{len(self.paths)} text file(s)" if len(self.paths) > 1 else str(self.paths[0])


def _missing_field(field: str, where: str, available) -> DataError:
    return DataError(f"{where} has no field {field!r}; its fields are {sorted(available)}. Pass the field that holds "
                     "the text with --text-field")


@dataclass(frozen=True)
class RecordFiles:
    """Files of records (JSON lines, parquet rows) whose text is one field."""

    paths: tuple[Path, ...]
    field: str = DEFAULT_TEXT_FIELD
    kind: ClassVar[str] = ""

    def fingerprint(self) -> str:
        return _digest(self.kind, self.field, [_file_stamp(p) for p in self.paths])

    def describe(self) -> str:
        return f"{len(self.paths)} {self.kind} file(s), field {self.field!r}"


@dataclass(frozen=True)
class JsonlFiles(RecordFiles):
    """JSON-lines files: one object per line, the document is `obj[field]` (blank lines are skipped)."""

    kind: ClassVar[str] = "jsonl"

    def documents(self) -> Iterator[str]:
        for path in self.paths:
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{number} is not valid JSON ({err.msg}); each line of a .jsonl file "
                                        "must be one JSON object") from None
                    if not isinstance(record, dict) or self.field not in record:
                        raise _missing_field(self.field, f"{path}:{number}",
                                             record.keys() if isinstance(record, dict) else [])
                    yield str(record[self.field])


@dataclass(frozen=True)
class ParquetFiles(RecordFiles):
    """Parquet files: one row per document, column `field`."""

    kind: ClassVar[str] = "parquet"

    def documents(self) -> Iterator[str]:
        import pyarrow.parquet as pq

        for path in self.paths:
            table = pq.ParquetFile(path)
            if self.field not in table.schema_arrow.names:
                raise _missing_field(self.field, str(path), table.schema_arrow.names)
            for batch in table.iter_batches(columns=[self.field], batch_size=1024):
                yield from (text for text in batch.column(0).to_pylist() if text is not None)


@dataclass(frozen=True)
class HFDataset:
    """A Hugging Face dataset read with `datasets.load_dataset(name, config, split=split, streaming=True)`.

    Streaming reads the dataset once, in order, without downloading it whole first (FineWeb-size sets work); the
    tokens land in the token cache, so later runs never touch the network. `max_documents` bounds the read."""

    name: str
    config: str | None = None
    split: str = "train"
    field: str = DEFAULT_TEXT_FIELD
    max_documents: int | None = None

    def documents(self) -> Iterator[str]:
        import datasets

        reason = hub_unavailable()
        if reason is not None:
            raise DataError(f"cannot stream Hugging Face dataset {self.describe()}: it is not a local file, and the "
                            f"hub cannot be reached ({reason}); download the data and pass local files with --data")
        try:
            stream = datasets.load_dataset(self.name, self.config, split=self.split, streaming=True)
        except Exception as err:  # datasets raises many types (network, missing config, missing split)
            raise DataError(f"cannot open Hugging Face dataset {self.name!r} (config {self.config!r}, split "
                            f"{self.split!r}): {err}. Check the name, config and split, and that the hub is "
                            "reachable (or download the data and pass local files)") from err
        for number, record in enumerate(stream):
            if self.max_documents is not None and number >= self.max_documents:
                return
            if self.field not in record:
                raise _missing_field(self.field, f"dataset {self.name!r} record {number}", record.keys())
            yield str(record[self.field])

    def fingerprint(self) -> str:
        return _digest("hf", self.name, self.config, self.split, self.field, self.max_documents)

    def describe(self) -> str:
        config = f":{self.config}" if self.config else ""
        return f"hf:{self.name}{config} [{self.split}], field {self.field!r}"


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """The built-in corpus's files: the standard library's `*.py` sources, sorted, tests and non-UTF-8 left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        if STDLIB_SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        files.append(path)
    return tuple(files)


@dataclass(frozen=True)
class StdlibCorpus:
    """The built-in default corpus (see the module docstring)."""

    def documents(self) -> Iterator[str]:
        for path in stdlib_files():
            yield path.read_text(encoding="utf-8")

    def fingerprint(self) -> str:
        return _digest("stdlib", sys.version, [_file_stamp(p) for p in stdlib_files()])

    def describe(self) -> str:
        return f"built-in corpus: Python {sys.version.split()[0]} standard-library sources"


@dataclass(frozen=True)
class ShakespeareCorpus:
    """The built-in Tiny Shakespeare corpus: one document."""

    @staticmethod
    def compressed() -> bytes:
        return importlib.resources.files("lmlab.data").joinpath(*SHAKESPEARE_FILE).read_bytes()

    def documents(self) -> Iterator[str]:
        yield gzip.decompress(self.compressed()).decode("utf-8")

    def fingerprint(self) -> str:
        return _digest(SHAKESPEARE, hashlib.sha256(self.compressed()).hexdigest())

    def describe(self) -> str:
        return "built-in corpus: Tiny Shakespeare (karpathy/char-rnn)"


Source = TextFiles | JsonlFiles | ParquetFiles | HFDataset | StdlibCorpus | ShakespeareCorpus


@dataclass(frozen=True)
class Corpus:
    """Documents from one or more sources, in the order given."""

    sources: tuple[Source, ...]

    def documents(self) -> Iterator[str]:
        for source in self.sources:
            yield from source.documents()

    def fingerprint(self) -> str:
        return _digest([source.fingerprint() for source in self.sources])

    def describe(self) -> str:
        return " + ".join(source.describe() for source in self.sources)


def _expand(spec: str) -> tuple[Path, ...]:
    if glob.has_magic(spec):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"no file matches {spec!r}; check the pattern (quote it so the shell does not expand it)")
        return tuple(matches)
    path = Path(spec).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass a glob such as '{path}/**/*.txt'")
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    return (path,)


def absolute_spec(spec: str) -> str:
    """A `--data` value with its file path or glob made absolute (`~` expanded), so it names the same files from any
    working directory; the built-in corpora and `hf:` names are returned as they are."""
    if spec in (STDLIB, SHAKESPEARE) or spec.startswith(HF_PREFIX):
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def parse_source(spec: str, text_field: str = DEFAULT_TEXT_FIELD, hf_split: str = "train",
                 max_documents: int | None = None) -> Source:
    """One `--data` value as a source (see the module docstring for the forms)."""
    if spec == STDLIB:
        return StdlibCorpus()
    if spec == SHAKESPEARE:
        return ShakespeareCorpus()
    if spec.startswith(HF_PREFIX):
        name, _, config = spec[len(HF_PREFIX):].partition(":")
        if not name:
            raise DataError(f"{spec!r} names no dataset; write hf:NAME or hf:NAME:CONFIG")
        return HFDataset(name, config or None, hf_split, text_field, max_documents)
    paths = _expand(spec)
    suffixes = {p.suffix.lower() for p in paths}
    if suffixes <= {".jsonl"}:
        return JsonlFiles(paths, text_field)
    if suffixes <= {".parquet"}:
        return ParquetFiles(paths, text_field)
    if suffixes & {".jsonl", ".parquet"}:
        raise DataError(f"{spec!r} mixes text, jsonl and parquet files; pass each kind as its own --data")
    return TextFiles(paths)


def open_corpus(specs: list[str] | tuple[str, ...] | None, text_field: str = DEFAULT_TEXT_FIELD,
                hf_split: str = "train", max_documents: int | None = None) -> Corpus:
    """The corpus named by `--data` values (none: the built-in corpus)."""
    specs = list(specs or [STDLIB])
    return Corpus(tuple(parse_source(spec, text_field, hf_split, max_documents) for spec in specs))


__all__ = ["Corpus", "DataError", "HFDataset", "JsonlFiles", "ParquetFiles", "SHAKESPEARE", "STDLIB",
           "ShakespeareCorpus", "StdlibCorpus", "TextFiles", "absolute_spec", "open_corpus", "parse_source",
           "stdlib_files"]
