"""Where things live on disk: model directories, training runs and their checkpoints.

A *model directory* is what `save_pretrained` writes for the model and its tokenizer (config.json,
model.safetensors, tokenizer files): `AutoModelForCausalLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)` both load it.

A *run directory* is what `lmlab train --out RUN` writes:

    RUN/checkpoints/step-00000100/   a model directory plus the trainer's own files (optimizer, RNG, data position)
    RUN/checkpoints/LATEST           the name of the newest complete checkpoint (replaced atomically)
    RUN/base/                        `lmlab finetune` only: the model the run started from (a model directory)

A LoRA fine-tune's checkpoints are adapter checkpoints (lmlab.lora): config.json and weights linked to RUN/base/,
with the adapters beside them; `from_pretrained` loads base + adapters, `lmlab export --merge-lora` merges them.

Every command that reads a model (`generate`, `eval`, `finetune`, `export`, `info --model`) accepts either.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
BASE_DIR = "base"
MODEL_CONFIG = "config.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def resolve_model_dir(path: str | Path) -> Path:
    """The model directory named by `path`: itself, or a run directory's newest complete checkpoint."""
    path = Path(path)
    if (path / MODEL_CONFIG).is_file():
        return path
    latest = path / CHECKPOINTS / LATEST
    if latest.is_file():
        checkpoint = path / CHECKPOINTS / latest.read_text().strip()
        if (checkpoint / MODEL_CONFIG).is_file():
            return checkpoint
        raise FileNotFoundError(f"{latest} names {checkpoint.name}, which holds no {MODEL_CONFIG}")
    if not path.exists():
        raise FileNotFoundError(f"no such model or run directory: {path}")
    raise FileNotFoundError(f"{path} is neither a model directory (no {MODEL_CONFIG}) nor a training run "
                            f"(no {CHECKPOINTS}/{LATEST}); pass the directory `lmlab train --out` wrote")
