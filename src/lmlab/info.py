"""Model facts for `lmlab info`: parameter breakdown and forward FLOPs per token."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lmlab.config import LMLabConfig
from lmlab.model import LMLabForCausalLM, count_parameters


@dataclass
class ParameterCounts:
    """total: every parameter once (a tied head is the embedding). embedding: input tables (token embedding and any
    other nn.Embedding, e.g. value embeddings). head: an untied output projection. non_embedding: the rest
    (blocks, norms, scalars)."""

    total: int
    embedding: int
    head: int
    non_embedding: int

    def as_dict(self) -> dict:
        return asdict(self)


def parameter_counts(model: LMLabForCausalLM) -> ParameterCounts:
    seen: set[int] = set()
    embedding = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            embedding += module.weight.numel()
    head = 0
    if id(model.lm_head.weight) not in seen:
        head = sum(p.numel() for p in model.lm_head.parameters())
    total = count_parameters(model)
    return ParameterCounts(total=total, embedding=embedding, head=head, non_embedding=total - embedding - head)


def parameter_breakdown(model: LMLabForCausalLM) -> list[dict]:
    """Parameters grouped by component kind, each parameter counted once, in model order.

    Kinds: "embedding" (every nn.Embedding), "head" (an untied output projection), "mixer <name>" and "mlp <name>" per
    registry name, "norm" (every block or model child whose attribute name ends in "norm": pre/post norms and the
    final norm; norms inside a mixer count with the mixer), any other block or model part by its attribute name
    ("fan", "gpas", ...), and "other" for parameters held directly by a block or the model. Each entry:
    {"component", "modules", "parameters", "each"}, where "each" is the per-module size when all modules agree.
    """
    seen: set[int] = set()
    groups: dict[str, dict] = {}

    def add(kind: str, parameters) -> None:
        fresh = [p for p in parameters if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        size = sum(p.numel() for p in fresh)
        if size:
            group = groups.setdefault(kind, {"component": kind, "modules": 0, "parameters": 0, "sizes": set()})
            group["modules"] += 1
            group["parameters"] += size
            group["sizes"].add(size)

    for module in model.modules():
        if isinstance(module, nn.Embedding):
            add("embedding", module.parameters())
    add("head", model.lm_head.parameters())
    for i, block in enumerate(model.model.layers):
        spec = model.config.layer_spec(i)
        for name, child in block.named_children():
            add(_component_kind(name, spec), child.parameters())
    for name, child in model.model.named_children():
        if name != "layers":
            add(_component_kind(name, None), child.parameters())
    add("other", model.parameters())
    rows = []
    for group in groups.values():
        sizes = group.pop("sizes")
        rows.append({**group, "each": sizes.pop() if len(sizes) == 1 else None})
    return sorted(rows, key=lambda row: _KIND_ORDER.get(row["component"].split()[0], len(_KIND_ORDER)))


_KIND_ORDER = {"embedding": 0, "head": 1, "mixer": 2, "fan": 3, "mlp": 4, "norm": 5}


def _component_kind(attribute: str, spec) -> str:
    if attribute == "mixer" and spec is not None:
        return f"mixer {spec.mixer}"
    if attribute == "mlp" and spec is not None:
        return f"mlp {spec.mlp}"
    if attribute.endswith("norm"):
        return "norm"
    return attribute


def forward_flops_per_token(config: LMLabConfig, seq_len: int) -> float:
    """Forward FLOPs per token of one sequence of `seq_len` tokens, counted by torch's FlopCounterMode on the meta
    device (no memory, no compute). Counts matmul-class ops (linear, bmm, attention) as 2 FLOPs per multiply-add;
    attention is counted over the full T×T score matrix, the usual convention (Kaplan et al. 2020)."""
    with torch.device("meta"):
        model = LMLabForCausalLM(config).eval()
        input_ids = torch.zeros(1, seq_len, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    return counter.get_total_flops() / seq_len


def describe(config: LMLabConfig, seq_len: int) -> dict:
    """Everything `lmlab info --preset` prints, as a dict."""
    with torch.device("meta"):
        model = LMLabForCausalLM(config)
    counts = parameter_counts(model)
    return {
        "preset": config.preset,
        "parameters": counts.as_dict(),
        "components": parameter_breakdown(model),
        "seq_len": seq_len,
        "forward_flops_per_token": forward_flops_per_token(config, seq_len),
        "layers": [vars(config.layer_spec(i)) for i in range(config.num_hidden_layers)],
    }
