"""lmlab: build, train, evaluate and compare small language-model architectures.

Importing lmlab registers `LMLabConfig` / `LMLabForCausalLM` with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(path)` loads any saved lmlab model.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from lmlab.config import ConfigError, LayerSpec, LMLabConfig
from lmlab.model import LMLabForCausalLM, LMLabModel, count_parameters
from lmlab.presets import get_preset, list_presets, preset_config

AutoConfig.register(LMLabConfig.model_type, LMLabConfig)
AutoModel.register(LMLabConfig, LMLabModel)
AutoModelForCausalLM.register(LMLabConfig, LMLabForCausalLM)

__version__ = "0.1.0"

__all__ = ["ConfigError", "LMLabConfig", "LMLabForCausalLM", "LMLabModel", "LayerSpec", "count_parameters",
           "get_preset", "list_presets", "preset_config"]
