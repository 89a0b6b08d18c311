"""Loading published checkpoints: official key names and layouts -> lmlab's (one module per family, registered in
`CONVERTERS`; the shared reading and strict loading are in `lmlab.convert.base`)."""

from lmlab.convert import n4, ngen4, nyx, yatgpt  # noqa: F401  (each registers its converter)
from lmlab.convert.base import CONVERTERS, CheckpointMismatchError, load_exactly, read_state_dict

__all__ = ["CONVERTERS", "CheckpointMismatchError", "load_exactly", "read_state_dict"]
