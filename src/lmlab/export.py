"""Exporting: a plain, self-contained model directory from a model directory or training run, with LoRA adapters
folded into the weights when asked (W + (α/r)·B·A), and the tokenizer files copied along."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmlab.model import count_parameters
from lmlab.run_layout import copy_tokenizer_files, resolve_model_dir
from lmlab.train.lora import has_adapters, load_base_weights, load_lora, merge_lora, resolve_adapter_dir


@dataclass
class Exported:
    source: Path  # the model directory read
    adapters: str | Path | None  # the adapters merged in, if any
    parameters: int
    tokenizer_files: int


def export(model: str | Path, out_dir: str | Path, merge_lora_from: str | Path | bool | None = None) -> Exported:
    """Write `model` (a model directory or run) to `out_dir` as a plain model directory. `merge_lora_from`: True
    merges the adapters `model` carries (a LoRA fine-tune's run or checkpoint); a path merges the adapters saved
    there; None exports as is (refused for an adapter checkpoint, which would lose its adapters)."""
    model_dir, out_dir = resolve_model_dir(model), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(f"OUT_DIR {out_dir} is the base model directory; write the export somewhere else")
    carries = has_adapters(model_dir)
    adapters = model_dir if merge_lora_from is True else merge_lora_from
    if carries and adapters is None:
        raise ValueError(f"{model_dir} is a LoRA checkpoint (base weights + adapters); add --merge-lora to export "
                         "the model with its adapters merged in")
    if merge_lora_from is True and not carries:
        raise ValueError(f"{model_dir} carries no LoRA adapters; name the adapters to merge: --merge-lora ADAPTERS")
    if carries and resolve_adapter_dir(adapters).resolve() != model_dir.resolve():
        raise ValueError(f"{model_dir} carries LoRA adapters of its own; export it with --merge-lora alone, or pass "
                         "a plain base model as MODEL")
    loaded = load_base_weights(model_dir)
    if adapters is not None:
        loaded = merge_lora(load_lora(loaded, adapters))
    loaded.save_pretrained(out_dir)
    return Exported(model_dir, adapters, count_parameters(loaded), copy_tokenizer_files(model_dir, out_dir))


__all__ = ["Exported", "export"]
