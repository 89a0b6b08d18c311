"""Loading a saved model and its tokenizer for generation and evaluation, on a chosen device and dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.errors import TokenizerError
from lmlab.model_files import check_model_dir
from lmlab.run_layout import resolve_model_dir

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the first CUDA GPU when there is one, else the CPU; otherwise any torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that supports it, float32 otherwise."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    from lmlab.data.tokenizers import UNBOUNDED_LENGTH

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"no usable tokenizer in {model_dir} ({err}); a model directory holds its "
                                "tokenizer: save it there with tokenizer.save_pretrained(dir)") from err
    # lmlab's evaluation windows texts itself: the saved model_max_length must not warn about long files
    tokenizer.model_max_length = UNBOUNDED_LENGTH
    return tokenizer


def load_model(path: str | Path, device: str = "auto", dtype: str = "auto"):
    """(model in eval mode, tokenizer, model directory) for a model directory or a training run; the directory is
    checked first (lmlab.model_files), and a tokenizer with more ids than the model's vocabulary is refused."""
    from transformers import AutoModelForCausalLM

    import lmlab  # noqa: F401  (registers lmlab models with the Auto classes)

    model_dir = resolve_model_dir(path)
    torch_device = pick_device(device)
    check_model_dir(model_dir)
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=pick_dtype(dtype, torch_device))
    if len(tokenizer) > model.config.vocab_size:
        raise TokenizerError(f"the tokenizer in {model_dir} has {len(tokenizer):,} ids but the model's vocabulary is "
                             f"{model.config.vocab_size:,}: the tokenizer files belong to another model; put back "
                             "the ones saved with it")
    return model.to(torch_device).eval(), tokenizer, model_dir


def quiet_progress_bars() -> None:
    """No progress bars from transformers and datasets (commands whose output is the text they print)."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


__all__ = ["DTYPE_CHOICES", "load_model", "load_tokenizer", "pick_device", "pick_dtype", "quiet_progress_bars"]
