"""Named presets: each is a config (an architecture at one size) plus the training recipe it was published with.

Published presets reproduce their model exactly (parameter counts are tested); `-tiny` presets keep the family's
components at a size that trains in seconds on a CPU. `lmlab info --list` shows them all. A family is one module
here; adding one is a new module plus its line below.
"""

from lmlab.presets import (  # noqa: F401  (each registers its presets)
    llama,
    n4,
    neollm,
    ngen4,
    nyx,
    qwen3,
    yatgpt,
)
from lmlab.presets.base import (
    PRESET_FAMILIES,
    PRESETS,
    Preset,
    get_preset,
    list_presets,
    preset_config,
    register_preset,
    register_preset_family,
)

__all__ = ["PRESETS", "PRESET_FAMILIES", "Preset", "get_preset", "list_presets", "preset_config", "register_preset",
           "register_preset_family"]
