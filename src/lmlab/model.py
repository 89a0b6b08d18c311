"""The decoder assembled from a config, and its causal-LM wrapper (Hugging Face `PreTrainedModel`).

    x = dropout(embedding_stage(embed(input_ids)))   # identity unless the config adds a norm or smear
    x = residual_stream(x, blocks)   # x = block_i(x) for each layer i, plus optional model-level scalars;
                                     # block wiring, mixer, MLP and norms named by config.layer_spec(i)
    h = final_norm(x)                # unless config.final_norm is False (N4)
    logits = softcap(lm_head(h)) in fp32   # lm_head tied to embed when config.tie_word_embeddings

The model knows nothing of any one architecture: every choice is a registry name in the config.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from lmlab.cache import LMLabCache
from lmlab.config import LMLabConfig
from lmlab.nn.component import Component
from lmlab.nn.context import ForwardContext
from lmlab.nn.embedding_stage import EmbeddingStage
from lmlab.nn.init import embedding, initialise, linear
from lmlab.nn.loss import mask_ignored_targets, shifted_cross_entropy, shifted_linear_cross_entropy
from lmlab.nn.norms import build_norm
from lmlab.nn.residual_stream import ResidualStream
from lmlab.registry import BLOCKS, POSITIONS

logger = logging.get_logger(__name__)


class LMLabPreTrainedModel(PreTrainedModel):
    config_class = LMLabConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PreNormBlock", "SandwichBlock", "ParallelBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        """Role-tagged projections and tables follow the config's init scheme; components set their own
        parameters (norm gains, gates, scalars) and buffers."""
        if hasattr(module, "init_role"):
            initialise(module, self.config)
        elif isinstance(module, Component):
            module.reset_parameters()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # the model creates its own LMLabCache (KV caches are only one of the states it keeps)
        return False


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Refuse ids outside [0, vocab_size): an embedding lookup would fail cryptically or read garbage."""
    if input_ids.numel() == 0:
        raise ValueError("input_ids is empty: give at least one token")
    if input_ids.is_meta:  # shape-only runs (FLOP counting) have no values to check
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size}); the tokenizer and the model "
                         "disagree — use the tokenizer the model was trained with, or a config with a larger "
                         "vocab_size")


def default_position_ids(attention_mask: torch.Tensor | None, past_length: int, length: int,
                         device) -> torch.Tensor:
    """Positions of the current tokens: counted over real tokens when a mask is given (left padding), else
    past_length .. past_length + length − 1."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + length, device=device)[None]
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -length:]


class LMLabModel(LMLabPreTrainedModel):
    """Embedding, decoder blocks and final norm; returns hidden states."""

    def __init__(self, config: LMLabConfig):
        super().__init__(config)
        self.embed_tokens = embedding(config.vocab_size, config.hidden_size)
        self.embedding_stage = EmbeddingStage(config)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.position = POSITIONS[config.position](config)
        self.layers = nn.ModuleList(
            BLOCKS[config.layer_spec(i).block](config, i) for i in range(config.num_hidden_layers))
        self.residual_stream = ResidualStream(config)
        self.norm = build_norm(config, config.hidden_size) if config.final_norm else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def check_positions_up_to(self, last: int) -> None:
        """Raise now if position `last` is beyond what the position encoding holds in this model's dtype (XPOS key
        scales). An eager forward checks its own positions; a compiled one cannot read them without splitting its
        graph, so compiled decoding checks its last position before it starts."""
        rotation = self.position(torch.tensor([[last]], device=self.embed_tokens.weight.device))
        if hasattr(rotation, "check_dtype"):
            rotation.check_dtype(self.dtype)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: LMLabCache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.training and use_cache and any(block.gradient_checkpointing for block in self.layers):
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing; using use_cache=False")
            use_cache = False
        if use_cache and not isinstance(past_key_values, LMLabCache):
            if past_key_values is not None and past_key_values.get_seq_length() > 0:
                raise TypeError("lmlab models keep their own LMLabCache; got a filled "
                                f"{type(past_key_values).__name__}")
            past_key_values = LMLabCache(self.config.num_hidden_layers)
        cache = past_key_values if use_cache else None
        past_length = cache.get_seq_length() if cache is not None else 0

        if input_ids is not None:
            if not torch.compiler.is_compiling():  # reading the ids' range would split a compiled graph in two
                check_token_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        total = past_length + length
        limit = self.config.max_position_embeddings
        if limit is not None and total > limit:
            raise ValueError(f"sequence of {total} tokens is longer than this model's position limit "
                             f"max_position_embeddings={limit}; shorten the input (or, for RoPE models, extend "
                             "the context with rope_scaling)")

        key_padding = None
        if attention_mask is not None:
            if attention_mask.shape != (batch, total):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, past + "
                                 f"current tokens) = ({batch}, {total})")
            # an all-ones mask is dropped (unmasked kernels are faster), except when compiled: testing it would split
            # the graph, and a mask of ones gives the same result
            if torch.compiler.is_compiling() or not bool(attention_mask.all()):
                key_padding = attention_mask.bool()
        if position_ids is None:
            position_ids = default_position_ids(key_padding, past_length, length, inputs_embeds.device)
        position_ids = position_ids.expand(batch, -1)

        ctx = ForwardContext(position_ids=position_ids, rotation=self.position(position_ids),
                             key_padding_mask=key_padding, cache=cache, past_length=past_length,
                             input_ids=input_ids)
        x = self.embedding_dropout(self.embedding_stage(inputs_embeds, ctx))
        x = self.residual_stream(x, self.layers, ctx)
        if self.norm is not None:
            x = self.norm(x)
        if cache is not None:
            cache.seen_tokens = total
        return BaseModelOutputWithPast(last_hidden_state=x, past_key_values=cache)


class LMLabForCausalLM(LMLabPreTrainedModel, GenerationMixin):
    """LMLabModel plus the language-model head and the shifted cross-entropy loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LMLabConfig):
        super().__init__(config)
        self.model = LMLabModel(config)
        self.lm_head = linear(config.hidden_size, config.vocab_size, config.lm_head_bias, "head")
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: LMLabCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        """`labels` are the input ids with padding set to −100; the model shifts them (targets equal to
        `config.loss_ignore_token_id` are not scored either). `logits_to_keep = k` computes logits for the last k
        positions only (0 = all).

        With `config.loss = "chunked"` and labels, the loss comes from the hidden states without materialising the
        logits, and `logits` is None unless `logits_to_keep = k` asks for the last k positions'."""
        if labels is not None and use_cache is None:
            use_cache = False
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache)
        hidden = outputs.last_hidden_state
        if labels is not None:
            labels = mask_ignored_targets(labels, self.config.loss_ignore_token_id)
        if labels is not None and self.config.loss == "chunked":
            loss = shifted_linear_cross_entropy(hidden, self.lm_head.weight, labels, bias=self.lm_head.bias,
                                                softcap=self.config.logit_softcap)
            logits = self.compute_logits(hidden[:, -logits_to_keep:]) if logits_to_keep else None
            return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.compute_logits(hidden)
        loss = None
        if labels is not None:
            if logits_to_keep:
                raise ValueError("labels need logits for every position; do not combine them with logits_to_keep "
                                 "(or use loss='chunked', which needs no logits for the loss)")
            loss = shifted_cross_entropy(logits, labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of hidden states (B, T, d), soft-capped when the config asks."""
        logits = self.lm_head(hidden).float()
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once each (`parameters()` already skips a tied head's shared tensor)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["LMLabForCausalLM", "LMLabModel", "LMLabPreTrainedModel", "count_parameters"]
