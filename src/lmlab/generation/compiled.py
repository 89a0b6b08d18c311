"""A compiled one-token decoding step (`lmlab generate --compile`, `Generator(..., compile=True)`).

A cached decoding step of a small model is a few hundred tiny ops: Python and dispatch overhead, not arithmetic,
costs most of its time. `torch.compile` traces the step once and fuses its ops; `dynamic=True` lets the batch and
the cache length vary without recompiling (the engine reserves every KV buffer's full length before decoding, so no
buffer grows inside the step, which would recompile it).
On CPU, inductor's `freezing` also folds the weights into the compiled code as constants, with matmul weights
pre-packed for the CPU's BLAS.

Frozen weights are a snapshot. The step therefore fingerprints the model (`model_fingerprint`: each parameter's and
buffer's storage address and in-place version counter, each module's type, mode and hook count, and the config) and,
when anything in it has changed since it compiled (a training step, `load_state_dict`, `model.to(...)`, an added
hook or adapter, an edited config), drops every compiled graph (`torch.compiler.reset()`, which is process-wide) and
compiles again: a changed model is never decoded with a stale graph.

That check runs once per generation, so the compiled step skips dynamo's own per-call guards on the model's modules
(`torch.compiler.skip_guard_on_all_nn_modules_unsafe`; the guards on the inputs and the cache stay): they re-check
hundreds of module attributes before every token, 6–12% of a small model's step (ngen4-tiny and n4-tiny at width
256, batch 1, 40 tokens after a 256-token prompt, 2 threads on a 2-core AMD EPYC, both ways interleaved in one
process, best of 8: 2.91 → 2.72 and 4.24 → 3.74 ms per token). Without those guards a graph must never meet
another model, so each model's step compiles its own copy of the forward function (dynamo keeps its graphs per
function code object). An edit the fingerprint cannot see (assigning a plain attribute of a module by hand) needs
`torch.compiler.reset()`.

Compilation costs seconds to a minute on first use (per model and per input layout: padded batches pass a mask,
unpadded ones do not); it pays off on long generations and repeated calls. Measured speed-ups are in
benchmarks/generate.py.
"""

from __future__ import annotations

import contextlib
import types
import weakref

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

RECOMPILE_LIMIT = 64
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its CompiledDecodeStep


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """(address, version) of every parameter and buffer: changes when any is replaced or modified in place."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def hook_count(owner, prefix: str = "") -> int:
    """Hooks registered on a module (or, with prefix "_global", on every module: `torch.nn.modules.module`)."""
    return sum(len(getattr(owner, prefix + name)) for name in HOOKS)


def model_fingerprint(model: torch.nn.Module) -> tuple:
    """What a compiled forward of `model` was built from, beyond its inputs: the weights (`weights_fingerprint`),
    every module's name, type, training mode and hook count, the hooks on every module, and the config (its JSON, and
    the attention backend, `_attn_implementation`, which the JSON leaves out)."""
    modules = tuple((name, type(module), module.training, hook_count(module))
                    for name, module in model.named_modules())
    config = getattr(model, "config", None)
    settings = None if config is None else (config.to_json_string(use_diff=False),
                                            getattr(config, "_attn_implementation", None))
    return weights_fingerprint(model), modules, hook_count(torch.nn.modules.module, "_global"), settings


class CompiledDecodeStep:
    """`step(input_ids, cache=cache, use_cache=True, ...)`: the model's forward, compiled.

    Get it from `compiled_decode_step(model)` before each generation: that is where a changed model is noticed
    (fingerprinting costs a walk over every module and tensor, too slow to do per token)."""

    def __init__(self, model: torch.nn.Module):
        self.model = weakref.ref(model)  # the step is cached per model: a strong reference would keep it alive
        self.freeze = model.device.type == "cpu"
        self.fingerprint = model_fingerprint(model)
        self.compiled = torch.compile(own_copy(type(model).forward), dynamic=True,
                                      options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})

    def refresh(self) -> None:
        """Drop the compiled graphs if the model changed since they were compiled (`model_fingerprint`)."""
        fingerprint = model_fingerprint(self.model())
        if fingerprint != self.fingerprint:
            logger.warning("the model changed since its decoding step was compiled; recompiling")
            torch.compiler.reset()
            self.fingerprint = fingerprint

    def __call__(self, input_ids: torch.Tensor, **kwargs):
        from torch._dynamo import config as dynamo_config
        from torch._inductor import config as inductor_config

        # dynamo caches compiled graphs per function, one per batch layout (padded or not, one row or several): the
        # default limit of 8 would leave a model decoded in many layouts silently uncompiled
        with overridden(dynamo_config, recompile_limit=RECOMPILE_LIMIT), \
                overridden(inductor_config, freezing=self.freeze or inductor_config.freezing):
            return self.compiled(self.model(), input_ids, **kwargs)


def own_copy(function: types.FunctionType) -> types.FunctionType:
    """A copy of `function` with its own code object, so that dynamo's cache of compiled graphs for it is its own."""
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    return copy


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


__all__ = ["CompiledDecodeStep", "compiled_decode_step", "model_fingerprint", "weights_fingerprint"]
