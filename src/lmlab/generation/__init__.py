"""Generation: everything between a saved model and generated text.

    loading     a model directory or training run -> (model on a device and dtype, tokenizer)
    engine      prompts -> prefill, then one token per step with the model's own cache (BatchDecoder, Generator)
    sampling    logits -> the next token (repetition penalty, temperature, top-k, top-p, min-p)
    streaming   tokens -> text pieces that never split a character, cut at stop strings
    compiled    the engine's one-token step through torch.compile (`compile=True`)

`lmlab generate` and `lmlab eval` use it, and so does the trainer for its samples.
"""

from lmlab.generation.engine import FINISH_REASONS, BatchDecoder, Completion, Generator, generate_tokens
from lmlab.generation.loading import load_model, load_tokenizer
from lmlab.generation.sampling import Sampler, SamplingOptions

__all__ = ["FINISH_REASONS", "BatchDecoder", "Completion", "Generator", "Sampler", "SamplingOptions",
           "generate_tokens", "load_model", "load_tokenizer"]
