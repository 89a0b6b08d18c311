"""A compiled one-token decoding step (`lmlab generate --compile`, `Generator(..., compile=True)`).

A cached decoding step of a small model is a few hundred tiny ops: Python and dispatch overhead, not arithmetic,
costs most of its time. `torch.compile` traces the step once and fuses its ops; `dynamic=True` lets the batch and
the cache length vary without recompiling (the engine reserves every KV buffer's full length before decoding, so no
buffer grows inside the step, which would recompile it).
On CPU, inductor's `freezing` also folds the weights into the compiled code as constants, with matmul weights
pre-packed for the CPU's BLAS.

Frozen weights are a snapshot. The step therefore fingerprints the model's parameters and buffers (storage address
and in-place version counter of each) and, when any has changed since it compiled (a training step,
`load_state_dict`, `model.to(...)`), drops every compiled graph (`torch.compiler.reset()`, which is process-wide) and
compiles again: a changed model is never decoded with stale weights.

Compilation costs seconds to a minute on first use (per model and per input layout: padded batches pass a mask,
unpadded ones do not); it pays off on long generations and repeated calls. Measured speed-ups are in
benchmarks/generate.py.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

RECOMPILE_LIMIT = 64
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its CompiledDecodeStep


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """(address, version) of every parameter and buffer: changes when any is replaced or modified in place."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


class CompiledDecodeStep:
    """`step(input_ids, cache=cache, use_cache=True, ...)`: the model's forward, compiled.

    Get it from `compiled_decode_step(model)` before each generation: that is where changed weights are noticed
    (fingerprinting costs a walk over every tensor, too slow to do per token)."""

    def __init__(self, model: torch.nn.Module):
        self.model = weakref.ref(model)  # the step is cached per model: a strong reference would keep it alive
        self.freeze = model.device.type == "cpu"
        self.fingerprint = weights_fingerprint(model)
        self.compiled = torch.compile(type(model).forward, dynamic=True)

    def refresh(self) -> None:
        """Drop the compiled graphs if the model's weights changed since they were compiled."""
        fingerprint = weights_fingerprint(self.model())
        if fingerprint != self.fingerprint:
            logger.warning("the model's weights changed since its decoding step was compiled; recompiling")
            torch.compiler.reset()
            self.fingerprint = fingerprint

    def __call__(self, input_ids: torch.Tensor, **kwargs):
        from torch._dynamo import config as dynamo_config
        from torch._inductor import config as inductor_config

        # every lmlab model shares one forward, and dynamo caches compiled graphs per function: the default limit
        # of 8 would leave a process that decodes with several models (or batch layouts) silently uncompiled
        with overridden(dynamo_config, recompile_limit=RECOMPILE_LIMIT), \
                overridden(inductor_config, freezing=self.freeze or inductor_config.freezing):
            return self.compiled(self.model(), input_ids, **kwargs)


@contextlib.contextmanager
def overridden(config, **values):
    """Set torch config attributes for the duration of a call (in force whenever the call compiles), then restore
    them; cheaper per token than `config.patch`."""
    saved = {name: getattr(config, name) for name in values}
    for name, value in values.items():
        setattr(config, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


def compiled_decode_step(model: torch.nn.Module) -> CompiledDecodeStep:
    """The model's compiled decoding step (built on first use and kept for the model's lifetime), checked against
    the model's current weights."""
    step = _STEPS.get(model)
    if step is None:
        step = _STEPS[model] = CompiledDecodeStep(model)
    else:
        step.refresh()
    return step


__all__ = ["CompiledDecodeStep", "compiled_decode_step", "weights_fingerprint"]
