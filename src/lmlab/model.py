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
from lmlab.hf_compat import CACHE_FIELD, one_cache
from lmlab.nn.component import Component
from lmlab.nn.context import ForwardContext
from lmlab.nn.embedding_stage import EmbeddingStage
from lmlab.nn.head import head_logits
from lmlab.nn.init import embedding, initialise, linear
from lmlab.nn.loss import (
    IGNORE_INDEX,
    mask_ignored_targets,
    shifted_cross_entropy,
    shifted_linear_cross_entropy,
)
from lmlab.nn.norms import build_norm
from lmlab.nn.residual_stream import ResidualStream
from lmlab.registry import BLOCKS, POSITIONS

logger = logging.get_logger(__name__)


class LMLabPreTrainedModel(PreTrainedModel):
    config_class = LMLabConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def post_init(self) -> None:
        # every registered block wiring is one unit that device maps never split
        self._no_split_modules = {BLOCKS[name].__name__ for name in BLOCKS.names()}
        super().post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Role-tagged projections and tables follow the config's init scheme; components set their own
        parameters (norm gains, gates, scalars) and buffers."""
        if hasattr(module, "init_role"):
            initialise(module, self.config)
        elif isinstance(module, Component):
            module.reset_parameters()

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """Disabled: lmlab classes travel as `modeling_lmlab.py` (lmlab.remote_code), not as copied sources."""

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
    low, high = (int(v) for v in torch.aminmax(input_ids))
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


def check_call_options(output_attentions: bool | None, token_type_ids: torch.Tensor | None) -> None:
    """Refuse the forward options transformers' plumbing may pass that an lmlab model cannot honour."""
    if output_attentions:
        raise ValueError("lmlab models do not return attention weights (output_attentions=True): not every token "
                         "mixer has them; register a forward hook on the attention modules to inspect them")
    if token_type_ids is not None and bool((token_type_ids != 0).any()):
        raise ValueError("token_type_ids other than 0: lmlab models have no segment embeddings, so they would be "
                         "ignored; drop them (tokenizer(..., return_token_type_ids=False))")


def scale_loss_to_item_count(loss: torch.Tensor, labels: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    """Turn a mean over this batch's scored targets into their sum divided by `num_items_in_batch` (the count over
    all of a step's accumulated micro-batches, as transformers' Trainer passes it), so accumulation weighs every
    target equally."""
    scored = (labels[:, 1:] != IGNORE_INDEX).sum()
    return loss * (scored.to(loss.dtype) / torch.as_tensor(num_items_in_batch, device=loss.device, dtype=loss.dtype))


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

    def new_cache(self) -> LMLabCache:
        """An empty decoding cache: pass it as `cache=` with `use_cache=True`; each forward extends it in place."""
        return LMLabCache(self.config.num_hidden_layers)

    def check_positions_up_to(self, last: int) -> None:
        """Raise now if position `last` is beyond what the position encoding holds in this model's dtype. An eager
        forward checks its own positions; a compiled one cannot read them without splitting its graph, so compiled
        decoding asks before it starts."""
        self.position.check_positions(last, self.dtype)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: LMLabCache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None, *,
                past_key_values: LMLabCache | None = None, output_attentions: bool | None = None,
                token_type_ids: torch.Tensor | None = None) -> BaseModelOutputWithPast | tuple:
        """Hidden states of the tokens (B, T, d). `cache` (or `past_key_values`, its name before transformers 5.24)
        is an `LMLabCache` that the forward extends in place when `use_cache`; without one, `use_cache` starts a new
        one. `attention_mask` (B, past + T) marks real tokens (left padding). `output_hidden_states` adds the
        stream entering each block and the final (normed) output. There is no `**kwargs`: an argument this model
        cannot honour is a TypeError, never silently dropped."""
        check_call_options(output_attentions, token_type_ids)
        cache = one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.training and use_cache and any(block.gradient_checkpointing for block in self.layers):
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing; using use_cache=False")
            use_cache = False
        if use_cache and not isinstance(cache, LMLabCache):
            if cache is not None and cache.get_seq_length() > 0:
                raise TypeError(f"lmlab models keep their own LMLabCache; got a filled {type(cache).__name__}")
            cache = self.new_cache()
        cache = cache if use_cache else None
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
        x = self.embedding_stage(inputs_embeds, ctx)
        if self.training and self.embedding_dropout.p > 0:  # a module call per step saved when decoding
            x = self.embedding_dropout(x)
        hidden_states = [] if output_hidden_states else None
        x = self.residual_stream(x, self.layers, ctx, hidden_states)
        if self.norm is not None:
            x = self.norm(x)
        if hidden_states is not None:
            hidden_states.append(x)
        if cache is not None:
            cache.seen_tokens = total
        output = BaseModelOutputWithPast(last_hidden_state=x, hidden_states=None if hidden_states is None
                                         else tuple(hidden_states), **{CACHE_FIELD: cache})
        return output if return_dict is not False else output.to_tuple()


class LMLabForCausalLM(LMLabPreTrainedModel, GenerationMixin):
    """LMLabModel plus the language-model head and the shifted cross-entropy loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch, which forward honours

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

    def new_cache(self) -> LMLabCache:
        """An empty decoding cache (see `LMLabModel.new_cache`)."""
        return self.model.new_cache()

    def check_positions_up_to(self, last: int) -> None:
        """See `LMLabModel.check_positions_up_to`."""
        self.model.check_positions_up_to(last)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: LMLabCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int = 0, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, *, past_key_values: LMLabCache | None = None,
                output_attentions: bool | None = None, token_type_ids: torch.Tensor | None = None,
                num_items_in_batch: int | torch.Tensor | None = None,
                return_logits: bool = True) -> CausalLMOutputWithPast | tuple:
        """`labels` are the input ids with padding set to −100; the model shifts them (targets equal to
        `config.loss_ignore_token_id` are not scored either). The loss is their mean, or, with
        `num_items_in_batch` (transformers' Trainer under gradient accumulation), their sum divided by it.
        `logits_to_keep = k` computes logits for the last k positions only (0 = all).

        With `config.loss = "chunked"` and labels, the loss comes from the hidden states without materialising the
        logits, and `logits` is None unless `logits_to_keep = k` asks for the last k positions'. `return_logits=False`
        with labels returns the loss only (the trainer's path); on a CPU it is computed as with loss="chunked", never
        holding the batch × sequence × vocabulary logits.

        The cache and the other arguments are `LMLabModel.forward`'s; unknown arguments are a TypeError."""
        if labels is not None and use_cache is None:
            use_cache = False
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=one_cache(cache, past_key_values), inputs_embeds=inputs_embeds,
                             use_cache=use_cache, output_hidden_states=output_hidden_states,
                             output_attentions=output_attentions, token_type_ids=token_type_ids)
        hidden = outputs.last_hidden_state
        loss = logits = None
        if labels is not None:
            labels = mask_ignored_targets(labels, self.config.loss_ignore_token_id)
        # loss only: chunked on a CPU, where fewer passes over the logits pay; on a GPU the materialised head and
        # cross-entropy kernels are faster (ngen4-50m on an H200: 0.77× with chunks), so logits are made and dropped
        chunked = self.config.loss == "chunked" or (not return_logits and not hidden.is_cuda)
        if labels is not None and chunked:
            loss = shifted_linear_cross_entropy(hidden, self.lm_head.weight, labels, bias=self.lm_head.bias,
                                                softcap=self.config.logit_softcap)
            if logits_to_keep:
                logits = self.compute_logits(hidden[:, -logits_to_keep:])
        else:
            if labels is not None and logits_to_keep:
                raise ValueError("labels need logits for every position; do not combine them with logits_to_keep "
                                 "(or use loss='chunked', which needs no logits for the loss)")
            logits = self.compute_logits(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
            if labels is not None:
                loss = shifted_cross_entropy(logits, labels)
                logits = logits if return_logits else None
        if loss is not None and num_items_in_batch is not None:
            loss = scale_loss_to_item_count(loss, labels, num_items_in_batch)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})
        return output if return_dict is not False else output.to_tuple()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of hidden states (B, T, d), soft-capped when the config asks (lmlab.nn.head)."""
        return head_logits(self.lm_head, hidden, self.config.logit_softcap)


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once each (`parameters()` already skips a tied head's shared tensor)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["LMLabForCausalLM", "LMLabModel", "LMLabPreTrainedModel", "count_parameters"]
