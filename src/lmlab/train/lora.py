"""LoRA fine-tuning through PEFT: adapters on the token mixers' projections, trained alone, saved alone, merged
exactly. Works on any lmlab model.

For a targeted projection y = W·x (W: out × in), LoRA adds ΔW·x with ΔW = (α/r)·B·A, A: r × in, B: out × r. B starts
at zero, so a fresh adapter is the zero function (PEFT's init: A Kaiming-uniform, B = 0); α defaults to r (scale 1).
Only A and B are trainable. Merging replaces W by W + ΔW and removes the adapters, leaving a plain
`LMLabForCausalLM` whose logits equal the adapted model's.

Default targets: every nn.Linear inside every layer's token mixer. For softmax attention these are q_proj, k_proj,
v_proj and out_proj, PaLM-rlhf's (and NYX's intended) design: per layer r·(d + h·d_h) + 2·r·(d + h_kv·d_h) +
r·(h·d_h + d) adapter parameters, 25,600 for nyx-30m at r = 8 (204,800 in all). The projections read the block's
normalised input, so the q/k/v adapters see what the base projections see (NYX's own LoRA fed them the raw input,
one of its four bugs; spec nyx.md §7).

PaLM-rlhf's named "finetune scopes" are PEFT adapter names (`model.add_adapter(name, LoraConfig)`,
`model.set_adapter(name)`), and its `disable_lora` flag is `with model.disable_adapter(): ...`.

How a trainer uses it:

    model = apply_lora(model, LoraSettings(rank=8))           # before building the optimizer
    optimizer = make_optimizer(trainable_parameters(model))   # adapters only; base weights stay frozen
    save_lora(model, checkpoint_dir / ADAPTER_DIR)            # at each checkpoint: adapter weights + config only
    model = load_lora(base_model, adapter_dir, trainable=True)  # to resume
    merged = merge_lora(model)                                # a plain LMLabForCausalLM (`lmlab export --merge-lora`)

An *adapter checkpoint* (what `lmlab finetune --lora` writes, `save_lora_checkpoint`) is a model directory whose
weights are the base's, linked rather than copied, with the adapters beside them:

    config.json, model.safetensors -> ../../base/...   the base model (links: a checkpoint costs only its adapters)
    adapter_config.json, adapter_model.safetensors     the adapters (PEFT's format)

Transformers' PEFT integration loads such a directory as base + adapters (`AutoModelForCausalLM.from_pretrained`),
so nothing that reads it as a model directory gets the bare base by mistake. `load_base_weights` reads the base
alone; `load_merged` gives the plain merged model of any model directory, run or adapter checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from torch import nn

from lmlab.config import LMLabConfig
from lmlab.model import LMLabForCausalLM
from lmlab.model_files import check_model_dir, weight_files
from lmlab.remote_code import write_remote_code
from lmlab.run_layout import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    CHECKPOINTS,
    LATEST,
    MODEL_CONFIG,
    resolve_model_dir,
)


@dataclass(frozen=True)
class LoraSettings:
    """rank r; alpha α (None = r, i.e. scale 1); targets: module names (PEFT semantics: a name matches a module whose
    dotted path equals it or ends with "." + it), None = every projection of every token mixer; dropout on the
    adapter input."""

    rank: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] | None = None
    dropout: float = 0.0

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets is not None and not self.targets:
            raise ValueError("LoRA targets is empty; name at least one projection (e.g. q_proj) or leave it unset")


def mixer_projections(model: nn.Module) -> list[str]:
    """Dotted paths of every nn.Linear inside a token mixer."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and re.search(r"\.mixer\.", name)]


def default_targets(model: nn.Module) -> str:
    """A PEFT target pattern (full match) for every projection of every token mixer."""
    relative = sorted({name.split(".mixer.", 1)[1] for name in mixer_projections(model)})
    if not relative:
        raise ValueError("this model's token mixers have no nn.Linear projections to adapt; name targets explicitly")
    return r".*\.mixer\.(?:" + "|".join(re.escape(name) for name in relative) + ")"


def _check_targets(model: nn.Module, targets: tuple[str, ...]) -> None:
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in linears):
            choices = sorted({name.rsplit(".", 1)[-1] for name in mixer_projections(model)})
            raise ValueError(f"LoRA target {target!r} matches no linear projection of this model; the token mixers' "
                             f"projections are {choices}")


def lora_config(model: nn.Module, settings: LoraSettings) -> LoraConfig:
    """PEFT's config for `settings` on `model`, checked against the model (which is left untouched)."""
    if isinstance(model, PeftModel):
        raise ValueError("the model already carries adapters; merge them (merge_lora) or start from the base model")
    if settings.targets is not None:
        _check_targets(model, settings.targets)
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha or settings.rank,
                      target_modules=list(settings.targets) if settings.targets else default_targets(model),
                      lora_dropout=settings.dropout, bias="none", task_type="CAUSAL_LM")


def apply_lora(model: LMLabForCausalLM, settings: LoraSettings | None = None) -> PeftModel:
    """Wrap `model` (modified in place) with fresh LoRA adapters; only the adapters are trainable."""
    return get_peft_model(model, lora_config(model, settings or LoraSettings()))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should update (the adapters only, after apply_lora)."""
    return [p for p in model.parameters() if p.requires_grad]


def adapter_parameter_count(model: PeftModel) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


def save_lora(model: PeftModel, directory: str | Path) -> Path:
    """Write the adapters alone (adapter_config.json + adapter_model.safetensors) to `directory`."""
    if not isinstance(model, PeftModel):
        raise TypeError("save_lora needs a model returned by apply_lora or load_lora; a plain model has no adapters")
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory


def resolve_adapter_dir(path: str | Path) -> Path:
    """The adapter directory named by `path`: itself, its `adapter/` subdirectory, or, for a training run, the
    newest checkpoint (itself or its `adapter/`)."""
    path = Path(path)
    if (path / CHECKPOINTS / LATEST).is_file():
        path = resolve_model_dir(path)
    for directory in (path, path / ADAPTER_DIR):
        if (directory / ADAPTER_CONFIG).is_file():
            if not (directory / ADAPTER_WEIGHTS).is_file():
                raise FileNotFoundError(f"{directory} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
            return directory
    raise FileNotFoundError(f"{path} holds no {ADAPTER_CONFIG} (nor {ADAPTER_DIR}/{ADAPTER_CONFIG}); pass the "
                            "directory that save_lora (or `lmlab finetune --lora`) wrote")


def load_lora(base: LMLabForCausalLM, directory: str | Path, trainable: bool = False) -> PeftModel:
    """`base` (modified in place) with the adapters saved in `directory` (see resolve_adapter_dir); every adapter
    tensor must load.

    trainable=False gives an inference model; True resumes fine-tuning (adapters trainable, base frozen).
    """
    directory = resolve_adapter_dir(directory)
    model = PeftModel.from_pretrained(base, directory, is_trainable=trainable)
    _check_all_adapter_weights_loaded(model, directory)
    return model


def _check_all_adapter_weights_loaded(model: PeftModel, directory: Path) -> None:
    """PEFT loads adapter weights non-strictly; a missing tensor would silently stay at its fresh init."""
    from safetensors.torch import load_file

    saved = load_file(str(directory / ADAPTER_WEIGHTS))
    expected = get_peft_model_state_dict(model)
    missing, unexpected = set(expected) - set(saved), set(saved) - set(expected)
    if missing or unexpected:
        raise ValueError(f"the adapters in {directory} do not fit this base model: missing "
                         f"{sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]} (trained on another "
                         "architecture or size?)")
    for key, tensor in expected.items():
        if not torch.equal(tensor.cpu(), saved[key].to(tensor.dtype)):
            raise ValueError(f"adapter tensor {key} from {directory} did not load")


def merge_lora(model: PeftModel) -> LMLabForCausalLM:
    """Fold every adapter into its base weight (W + (α/r)·B·A) and return the plain model."""
    if not isinstance(model, PeftModel):
        raise TypeError("merge_lora needs a model with adapters (from apply_lora or load_lora)")
    return model.merge_and_unload()


def has_adapters(model_dir: str | Path) -> bool:
    """Whether the model directory carries LoRA adapters beside its weights (an adapter checkpoint)."""
    return (Path(model_dir) / ADAPTER_CONFIG).is_file()


def save_lora_checkpoint(model: PeftModel, folder: str | Path, base_dir: str | Path) -> Path:
    """Write an adapter checkpoint into `folder`: the adapters, the base's config.json, and relative links to the
    base's weight files in `base_dir` (a plain model directory), so the folder loads as base + adapters."""
    folder, base_dir = Path(folder), Path(base_dir)
    if has_adapters(base_dir):
        raise ValueError(f"{base_dir} carries adapters of its own; the base of an adapter checkpoint must be a plain "
                         "model directory")
    save_lora(model, folder)
    shutil.copy2(base_dir / MODEL_CONFIG, folder / MODEL_CONFIG)
    write_remote_code(folder)  # the config's auto_map names it
    for weights in weight_files(base_dir):
        (folder / weights.name).symlink_to(os.path.relpath(weights.resolve(), folder.resolve()))
    return folder


def load_base_weights(model_dir: str | Path) -> LMLabForCausalLM:
    """The model of `model_dir` (eval mode; in its saved dtype, fp32 for an adapter checkpoint) without any adapters
    it carries, loaded strictly."""
    from safetensors.torch import load_file

    from lmlab.convert import load_exactly

    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    if not has_adapters(model_dir):
        return LMLabForCausalLM.from_pretrained(model_dir).eval()
    model = LMLabForCausalLM(LMLabConfig.from_pretrained(model_dir))
    state = {}
    for path in weight_files(model_dir):
        if path.suffix == ".safetensors":
            state.update(load_file(str(path)))
    load_exactly(model, state, source=str(model_dir))
    return model.eval()


def load_merged(path: str | Path) -> LMLabForCausalLM:
    """The plain model named by `path` (model directory, run, or adapter checkpoint with its adapters merged)."""
    model_dir = resolve_model_dir(path)
    model = load_base_weights(model_dir)
    return merge_lora(load_lora(model, model_dir)) if has_adapters(model_dir) else model


__all__ = ["ADAPTER_DIR", "LoraSettings", "adapter_parameter_count", "apply_lora", "default_targets", "has_adapters",
           "load_base_weights", "load_lora", "load_merged", "lora_config", "merge_lora", "mixer_projections",
           "resolve_adapter_dir", "save_lora", "save_lora_checkpoint", "trainable_parameters"]
