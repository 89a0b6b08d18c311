"""Evaluation: perplexity / bits per byte of text files, and benchmark tasks through lm-evaluation-harness.

- `scoring`: batched log-likelihood of token spans (the primitive everything else uses);
- `perplexity`: strided sliding-window perplexity of a text file;
- `harness`: `LMLabLM`, lmlab models as an lm-eval `LM`;
- `tasks`: lmlab's task YAMLs (`tasks/`), where their data lives, local or hub;
- `run`: one evaluation run (`lmlab eval`), its table and JSON report.

lm-eval is imported only by `harness`, `tasks` and `run`, so `scoring` and `perplexity` work without it.
"""
