"""Reading PyTorch pickle files (.pt, .bin, .pth) without running code from them.

Unpickling can call any Python function the file names, so lmlab reads these files only with PyTorch's weights-only
unpickler: it builds tensors, plain containers and numbers, plus the few extra types a caller allows by name, and
refuses every other global the file names before calling it. A refusal becomes an `UnsafeFileError` that names the
file, the refused object and a fix; PyTorch's own message would suggest `weights_only=False`, which runs the file's
code, so it is never passed on.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from lmlab.errors import CorruptFileError, UnsafeFileError

_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
# numpy arrays of unsigned 32-bit integers (numpy's MT19937 RNG state), under the names numpy 1 and 2 pickle them by
NUMPY_UINT32_ARRAYS = (
    (_CORE.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
    (_CORE.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray, np.dtype, np.dtypes.UInt32DType,
)


def _refused_object(message: str) -> str:
    """What PyTorch's weights-only unpickler refused, from its message (e.g. `GLOBAL posix.system`)."""
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"but got (<[^>]+>)", message)
    return found.group(1) if found else "an object that is not a tensor or plain value"


def load_weights_only(path: str | Path, fix: str, allowed: tuple = ()) -> object:
    """`torch.load(path)` with the weights-only unpickler (and the extra `allowed` globals), on the CPU. A file
    naming anything else raises UnsafeFileError ending in `fix`; a file that is not a readable pickle raises
    CorruptFileError."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CorruptFileError(f"{path} is not a readable PyTorch file ({err}); it is truncated or corrupt: "
                                   "copy it again") from None
        raise UnsafeFileError(f"{path} holds {_refused_object(str(err))}, not only tensors and plain values; "
                              "loading it could run code, so lmlab refuses to. "
                              f"{fix}") from None
    except Exception as err:  # noqa: BLE001 (any parse failure of arbitrary bytes: zip, pickle, key errors)
        reason = str(err).split(". ")[0] or type(err).__name__
        raise CorruptFileError(f"{path} is not a readable PyTorch file ({reason}); it is truncated or corrupt: copy "
                               "it again") from None


__all__ = ["NUMPY_UINT32_ARRAYS", "load_weights_only"]
