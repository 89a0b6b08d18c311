"""lmlab models inside lm-evaluation-harness: an `LM` (registered as "lmlab") built on `score_spans` and the
generation engine.

    from lmlab.eval.harness import LMLabLM
    lm = LMLabLM(pretrained="runs/my-run")                 # or LMLabLM(model=model, tokenizer=tokenizer)
    lm_eval.simple_evaluate(model=lm, tasks=[...], task_manager=...)

Conventions follow lm-eval's HFLM for causal models: text is encoded without special tokens; a request with an
empty context is conditioned on the BOS token (else EOS); context + continuation is cut from the left to the
model's context length + 1; `loglikelihood_rolling` uses disjoint windows of the full context (stride = context).
"""

from __future__ import annotations

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from lmlab.eval.scoring import context_length, score_spans, strided_windows
from lmlab.generation.engine import Generator
from lmlab.generation.sampling import SamplingOptions

GENERATION_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p", "min_p",
                   "repetition_penalty"}


@register_model("lmlab")
class LMLabLM(TemplateLM):
    """An lmlab model (or any causal LM with an lmlab-style forward) and its tokenizer, for lm-eval."""

    def __init__(self, pretrained: str | None = None, model=None, tokenizer=None, device: str = "auto",
                 dtype: str = "auto", batch_size: int | str | None = 16, max_length: int | None = None,
                 max_batch_size: int | None = None):
        """`max_batch_size` is accepted for lm-eval's command line and not used: batches are bounded by a token
        and logit budget instead (lmlab.eval.scoring)."""
        super().__init__()
        if (pretrained is None) == (model is None):
            raise ValueError("give either pretrained=<model or run directory> or model= (with tokenizer=)")
        if model is None:
            from lmlab.generation.loading import load_model

            model, tokenizer, _ = load_model(pretrained, device, dtype)
        elif tokenizer is None:
            raise ValueError("model= needs its tokenizer=")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = 16 if batch_size is None or str(batch_size).startswith("auto") else int(batch_size)
        self.max_length = context_length(model.config, max_length)
        self.generator = Generator(model, tokenizer, add_special_tokens=False)

    # ---- tokens
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token, which lm-eval needs as a document separator; set "
                             "tokenizer.eos_token and save the tokenizer with the model")
        return eos

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.tokenizer.decode(tokens)

    # ---- requests
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        spans = []
        for _, context, continuation in requests:
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens is longer than the context "
                                 f"({self.max_length} tokens); raise --max-length or shorten the task's targets")
            spans.append(((context + continuation)[-(self.max_length + 1):], len(continuation)))
        results = score_spans(self.model, spans, max_batch=self.batch_size)
        for (key, _, _), result in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        spans, owners = [], []
        for index, (text,) in enumerate(req.args for req in requests):
            tokens = [self.prefix_token_id] + self.tok_encode(text)
            for start, first, end in strided_windows(len(tokens), self.max_length, self.max_length):
                spans.append((tokens[start:end], end - first))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, score_spans(self.model, spans, max_batch=self.batch_size),
                                       strict=True):
            totals[owner] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        outputs = [""] * len(requests)
        for indices in tqdm(groups.values(), desc="generate_until groups", disable=disable_tqdm):
            options = self._options(requests[indices[0]].args[1])
            room = max(self.max_length - options.max_new_tokens, 1)
            for begin in range(0, len(indices), self.batch_size):
                batch = indices[begin:begin + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-room:] or [self.prefix_token_id] for i in batch]
                for i, completion in zip(batch, self.generator.generate_ids(prompts, options), strict=True):
                    outputs[i] = completion.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, completion.text)
        return outputs

    def _options(self, gen_kwargs: dict) -> SamplingOptions:
        unknown = set(gen_kwargs) - GENERATION_KEYS
        if unknown:
            raise ValueError(f"unsupported generation_kwargs {sorted(unknown)}; lmlab supports "
                             f"{sorted(GENERATION_KEYS)}")
        until = gen_kwargs.get("until", [])
        sampling = bool(gen_kwargs.get("do_sample", False))
        return SamplingOptions(
            max_new_tokens=int(gen_kwargs.get("max_gen_toks", 256)),
            temperature=float(gen_kwargs.get("temperature", 1.0)) if sampling else 0.0,
            top_k=int(gen_kwargs.get("top_k", 0)), top_p=float(gen_kwargs.get("top_p", 1.0)),
            min_p=float(gen_kwargs.get("min_p", 0.0)),
            repetition_penalty=float(gen_kwargs.get("repetition_penalty", 1.0)),
            stop=tuple([until] if isinstance(until, str) else until))

    def get_model_info(self) -> dict:
        config = self.model.config
        return {"model_type": config.model_type, "preset": getattr(config, "preset", None),
                "parameters": sum(p.numel() for p in self.model.parameters()), "context_length": self.max_length,
                "dtype": str(self.model.dtype), "device": str(self.model.device)}


__all__ = ["LMLabLM"]
