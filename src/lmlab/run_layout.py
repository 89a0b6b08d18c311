"""Where things live on disk: model directories, training runs and their checkpoints.

A *model directory* is what `save_pretrained` writes for the model and its tokenizer (config.json,
model.safetensors, tokenizer files): `AutoModelForCausalLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)` both load it.

A *run directory* is what `lmlab train --out RUN` writes:

    RUN/train_config.json            the run's resolved TrainConfig
    RUN/checkpoints/step-00000100/   a model directory plus train_config.json and trainer_state.json +
                                     trainer_state.safetensors (optimizer, schedules, RNG, data position; no pickle)
    RUN/checkpoints/LATEST           the name of the newest complete checkpoint (replaced atomically)
    RUN/metrics.jsonl, RUN/tensorboard/, RUN/samples.txt
    RUN/base/                        `lmlab finetune` only: the model the run started from (a model directory)
    RUN/compare_done.json            `lmlab compare` only: the run ended (finished or diverged)

A *comparison directory* (`lmlab compare --out DIR`) holds DIR/compare.json (the plan), DIR/runs/VARIANT/seed-N/
(one run directory each) and the report files. A model directory may hold eval/results-<time>.json (`lmlab eval`).

A LoRA fine-tune's checkpoints are adapter checkpoints (lmlab.train.lora): config.json and weights linked to RUN/base/,
with the adapters beside them; `from_pretrained` loads base + adapters, `lmlab export --merge-lora` merges them.

Every command that reads a model (`generate`, `eval`, `finetune`, `export`, `info --model`) accepts either.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# model directories
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_WEIGHTS_INDEX = "model.safetensors.index.json"  # a sharded model's index, naming every shard
ADAPTER_DIR = "adapter"  # where a training checkpoint of an older layout kept its LoRA adapters
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EVAL_DIR = "eval"
# what `save_pretrained` of Hugging Face tokenizers writes besides tokenizer* files
TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                   "chat_template.jinja")
# run directories
CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
BASE_DIR = "base"
TRAIN_CONFIG = "train_config.json"
TRAINER_STATE = "trainer_state"  # trainer_state.json + trainer_state.safetensors (lmlab.train.state_file)
LEGACY_TRAINER_STATE = "trainer_state.pt"  # a pickle, as lmlab versions before the state files wrote it
TEMPORARY_PREFIX = ".tmp-"  # a checkpoint or base being written (renamed into place when complete) or deleted
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_FILE = "samples.txt"
# comparison directories
PLAN_FILE = "compare.json"
RUNS_DIR = "runs"
DONE_FILE = "compare_done.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def tokenizer_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir()
                  if p.is_file() and (p.name.startswith("tokenizer") or p.name in TOKENIZER_FILES))


def copy_tokenizer_files(model_dir: Path, out_dir: Path) -> int:
    """Copy a model directory's tokenizer files into `out_dir`; returns how many."""
    copied = tokenizer_files(model_dir)
    for path in copied:
        shutil.copy2(path, out_dir / path.name)
    return len(copied)


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
