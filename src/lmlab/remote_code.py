"""What a model directory written by lmlab carries so that transformers loads it in a process that never imported
lmlab: `auto_map` in config.json, naming the classes of `modeling_lmlab.py`, a few lines beside it that import them
from the installed lmlab package.

With `trust_remote_code=True`, transformers' Auto classes, `pipeline("text-generation")`, PEFT, the `Trainer` and
lm-eval's `hf` model then load the directory wherever lmlab is installed, from a local folder or from the Hugging
Face Hub. The module runs nothing but that import: the model's code is the installed package's. lmlab's own
commands never need it (they import lmlab and load without remote code).

lmlab classes travel this way only: `register_for_auto_class`, which would copy a class's whole source file into
every directory saved afterwards, is disabled on them.
"""

from __future__ import annotations

from pathlib import Path

MODULE = "modeling_lmlab"
AUTO_MAP = {
    "AutoConfig": f"{MODULE}.LMLabConfig",
    "AutoModel": f"{MODULE}.LMLabModel",
    "AutoModelForCausalLM": f"{MODULE}.LMLabForCausalLM",
}
SOURCE = '''"""lmlab model classes for transformers' `trust_remote_code=True` (needs `pip install lmlab`)."""

from lmlab.config import LMLabConfig
from lmlab.model import LMLabForCausalLM, LMLabModel

__all__ = ["LMLabConfig", "LMLabForCausalLM", "LMLabModel"]
'''


def write_remote_code(directory: str | Path) -> Path:
    """Write `modeling_lmlab.py` into `directory` (the file `AUTO_MAP` names)."""
    path = Path(directory) / f"{MODULE}.py"
    path.write_text(SOURCE, encoding="utf-8")
    return path


__all__ = ["AUTO_MAP", "MODULE", "write_remote_code"]
