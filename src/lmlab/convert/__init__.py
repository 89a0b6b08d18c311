"""Loading published checkpoints: official key names and layouts -> lmlab's (one module per family, registered in
`CONVERTERS` for state_dict files and `FOLDER_CONVERTERS` for Hugging Face model folders; the shared reading and
strict loading are in `lmlab.convert.base` and `lmlab.convert.model_folder`)."""

from lmlab.convert import (  # noqa: F401  (each registers its converter)
    llama,
    n4,
    ngen4,
    nyx,
    qwen3,
    yatgpt,
)
from lmlab.convert.base import CONVERTERS, CheckpointMismatchError, load_exactly, read_state_dict
from lmlab.convert.model_folder import FOLDER_CONVERTERS, convert_model_folder

__all__ = ["CONVERTERS", "FOLDER_CONVERTERS", "CheckpointMismatchError", "convert_model_folder", "load_exactly",
           "read_state_dict"]
