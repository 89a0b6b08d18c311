"""Decoding speed: lmlab's cached engine against full recomputation, transformers' generate and N4's own sampler.

For every `-tiny` preset this times new tokens per second for `--new-tokens` tokens after a `--prompt-tokens`
random prompt, at batch 1 and batch 8,
greedy, end-of-sequence ignored, fresh random weights, at one of two sizes:

- `small` (default): the preset's components, layers and heads with hidden size 256 (MLP width scaled with it)
  and a 8192-token vocabulary — a small model whose blocks, not its vocabulary projection, cost the time;
- `tiny`: the `-tiny` preset as it is (hidden size 64 beside the family's full vocabulary of 32–50k tokens: the
  output projection is ~95% of the weights and of every decoding step, whatever the cache does).

Methods:

- `cached`: lmlab.generation.engine (prefill, then one token per step with the model's cache);
- `compiled`: the same with `compile=True` (the one-token step through torch.compile, weights frozen on CPU; see
  lmlab.generation.compiled), timed after one untimed warm-up run that compiles it — `compile_s` is that run's time
  beyond a steady-state run: what a user pays once per model and process;
- `recompute`: the same engine with use_cache=False (the whole sequence every step, logits of the last position
  only) — target: cached (compiled) ≥ 10× this;
- `hf_generate`: transformers' `model.generate` on the same model (its cache is our LMLabCache) — target: cached
  (compiled) ≥ 1.5× this;
- `model_forward`: the model's cached one-token forward alone, timed in a bare loop: the floor under any decoding
  loop (cached_ms − forward_ms is our loop's overhead per step, hf_generate_ms − forward_ms transformers');
- `generate_n4c` (N4 only, batch 1): the published N4 sampler as specified in shared/specs/n4.md §7.1, written out
  below: a forward over the whole sequence per token, logits of every position, temperature 0.7, top-k 10.

All measurements run in one process on the same model; the fast ones are interleaved and the best of `--rounds`
counts (timings on a shared machine are noisy: other processes only ever slow a run down; read the ratios).
Prints one JSON document (and one line per preset on stderr as it goes).

`--targets` (and `rows(quick)` for benchmarks/run_all.py) measures the decoding targets instead, greedy, fp32,
128-token prompt, end-of-sequence ignored, one table row each:

- eager / compiled engine over HF `generate()` at batch 1 and 8, 64 new tokens, on ngen4 (quick: ngen4-tiny at the
  `small` size; full: ngen4-50m), against (a) `hf_twin`, transformers' GPT-NeoX of the same shape and wiring
  (sequential residual, full rotary, gelu_new, LayerNorm, tied head; random weights) running its own generate(),
  and (b) generate() on the lmlab model itself (through LMLabCache) — targets 1.5× eager, 2.5× compiled; each row's
  note gives the bound of that ratio: HF's time per token over one pass of the batch through every weight matrix
  (`weights_pass_seconds`), the work any decoder does per token;
- compile seconds of a tiny model (ngen4-tiny as it is, batch 1), in a child process with an empty inductor cache
  (cold: what the first use on a machine pays, C++ kernels built) and again with that cache filled (warm: a later
  process), wall and CPU seconds including the compiler's processes — target ≤ 30 s;
- N4 (n4-tiny at the `small` size) cached engine, eager and compiled, over `generate_n4c` at 256 new tokens,
  batch 1 — target ≥ 20×.

    PYTHONPATH=src python benchmarks/generate.py [--size small|tiny] [--presets n4-tiny,ngen4-tiny] [--threads 1]
    PYTHONPATH=src python benchmarks/generate.py --targets [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch
from common import best_of, machine, machine_line, print_table, row

from lmlab import LMLabForCausalLM, list_presets, preset_config
from lmlab.generation.engine import generate_tokens
from lmlab.generation.packed import onednn_pack, packed_product, packing_available, seconds_in_a_pass, weight_bytes
from lmlab.generation.sampling import SamplingOptions
from lmlab.hardware import keep_freed_memory, set_threads


def generate_n4c(model, input_ids: torch.Tensor, max_new_tokens: int = 512, temperature: float = 0.7,
                 top_k: int = 10, top_p: float = 2.0, eos_token_id: int | None = 2):
    """The published N4 sampler (spec §7.1): full recomputation per token, batch 1, yields one int per step."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids).logits[0, -1]
        if temperature != 1.0:
            logits = logits / temperature
        if top_k > 0:
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = torch.cumsum(torch.softmax(sorted_logits, -1), -1)
            remove = cumulative > top_p
            remove[1:] = remove[:-1].clone()
            remove[0] = False
            logits[order[remove]] = float("-inf")
        token = torch.multinomial(torch.softmax(logits, -1), 1)
        if eos_token_id is not None and token.item() == eos_token_id:
            return
        yield token.item()
        input_ids = torch.cat([input_ids, token[None]], dim=1)


def forward_ms_per_step(model, prompt: torch.Tensor, steps: int) -> float:
    """The model's own cached one-token forward, nothing else: the floor under any decoding loop."""
    with torch.inference_mode():
        cache = model.new_cache()
        model(prompt, cache=cache, use_cache=True, logits_to_keep=1)
        token = prompt[:, -1:]
        start = time.perf_counter()
        for _ in range(steps):
            model(token, cache=cache, use_cache=True)
        return (time.perf_counter() - start) / steps * 1e3


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


SMALL = dict(hidden_size=256, vocab_size=8192)


def benchmark_config(name: str, size: str, length: int):
    """The preset at `size`, dropout off, no end-of-sequence token (every method generates all `--new-tokens`
    without a stopping rule to evaluate), its position limit (if any) raised to `length` tokens."""
    base = dict(embedding_dropout=0.0, attention_dropout=0.0, residual_dropout=0.0, bos_token_id=None,
                eos_token_id=None, pad_token_id=None)
    config = preset_config(name, **base)
    if config.max_position_embeddings is not None:
        base["max_position_embeddings"] = max(config.max_position_embeddings, length)
    if size == "tiny":
        return preset_config(name, **base)
    scale = SMALL["hidden_size"] / config.hidden_size
    return preset_config(name, **base, head_dim=None, intermediate_size=int(config.intermediate_size * scale),
                         **SMALL)


def bench_batch(model, config, batch: int, prompt_tokens: int, new_tokens: int, rounds: int,
                skip_recompute: bool) -> dict:
    prompt = torch.randint(0, config.vocab_size, (batch, prompt_tokens))
    rows = prompt.tolist()
    greedy = SamplingOptions(max_new_tokens=new_tokens, temperature=0.0, stop_token_ids=())

    def cached():
        completions = generate_tokens(model, rows, greedy)
        assert all(len(c.token_ids) == new_tokens for c in completions)

    def compiled():
        completions = generate_tokens(model, rows, greedy, compile=True)
        assert all(len(c.token_ids) == new_tokens for c in completions)

    def hf_generate():
        with torch.inference_mode():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=new_tokens, pad_token_id=0, use_cache=True)
        assert out.shape[1] == prompt_tokens + new_tokens

    generate_tokens(model, rows, SamplingOptions(max_new_tokens=4, temperature=0.0, stop_token_ids=()))  # warm-up
    first_compiled_s = timed(compiled)[0]
    best = {"cached": math.inf, "compiled": math.inf, "hf_generate": math.inf, "model_forward": math.inf}
    for _ in range(rounds):  # interleaved, best of `rounds`: other processes on the machine only ever slow a run
        best["cached"] = min(best["cached"], timed(cached)[0] / new_tokens * 1e3)
        best["compiled"] = min(best["compiled"], timed(compiled)[0] / new_tokens * 1e3)
        best["hf_generate"] = min(best["hf_generate"], timed(hf_generate)[0] / new_tokens * 1e3)
        best["model_forward"] = min(best["model_forward"], forward_ms_per_step(model, prompt, new_tokens))
    entry = {f"{name}_ms_per_step": ms for name, ms in best.items()}
    entry["compile_s"] = first_compiled_s - best["compiled"] * new_tokens / 1e3
    for name in ("cached", "compiled", "hf_generate"):
        entry[f"{name}_tok_s"] = batch * 1e3 / best[name]
    entry["speedup_vs_hf_generate"] = best["hf_generate"] / best["cached"]
    entry["compiled_speedup_vs_hf_generate"] = best["hf_generate"] / best["compiled"]
    if not skip_recompute:  # minutes per run: timed once
        seconds = timed(generate_tokens, model, rows, greedy, use_cache=False)[0]
        entry["recompute_tok_s"] = batch * new_tokens / seconds
        entry["speedup_vs_recompute"] = entry["cached_tok_s"] / entry["recompute_tok_s"]
        entry["compiled_speedup_vs_recompute"] = entry["compiled_tok_s"] / entry["recompute_tok_s"]
    if batch == 1 and config.mixer == "selective_copy":
        seconds, tokens = timed(lambda p: list(generate_n4c(model, p, new_tokens, eos_token_id=None)), prompt)
        assert len(tokens) == new_tokens
        entry["generate_n4c_tok_s"] = new_tokens / seconds
        entry["speedup_vs_generate_n4c"] = entry["cached_tok_s"] / entry["generate_n4c_tok_s"]
        entry["compiled_speedup_vs_generate_n4c"] = entry["compiled_tok_s"] / entry["generate_n4c_tok_s"]
    return entry


def bench_preset(name: str, size: str, batches: list[int], prompt_tokens: int, new_tokens: int, rounds: int,
                 skip_recompute: bool) -> dict:
    torch.manual_seed(0)
    config = benchmark_config(name, size, prompt_tokens + new_tokens)
    model = LMLabForCausalLM(config).eval()
    result = {"parameters": sum(p.numel() for p in model.parameters()), "hidden_size": config.hidden_size,
              "layers": config.num_hidden_layers, "vocab_size": config.vocab_size}
    for batch in batches:
        result[f"batch_{batch}"] = bench_batch(model, config, batch, prompt_tokens, new_tokens, rounds,
                                               skip_recompute)
    return result


# ---- the decoding targets (`--targets`, `rows(quick)`)

TARGETS = {"eager": 1.5, "compiled": 2.5, "compile_s": 30.0, "generate_n4c": 20.0}
PROMPT_TOKENS, NEW_TOKENS, N4_NEW_TOKENS = 128, 64, 256


def hf_twin(config):
    """transformers' GPT-NeoX with an ngen4 config's shape and wiring, random weights, no end-of-sequence token."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    wiring = (config.mixer, config.position, config.block, config.mlp, config.norm, config.rope_pct)
    if wiring != ("attention", "rope", "prenorm", "gelu_new", "layernorm", 1.0) or \
            config.num_key_value_heads != config.num_attention_heads:
        raise ValueError(f"hf_twin builds GPT-NeoX twins of ngen4-shaped models; got {wiring}")
    twin = GPTNeoXConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                         num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                         intermediate_size=config.intermediate_size, hidden_act="gelu_new", rotary_pct=1.0,
                         rope_theta=config.rope_theta, max_position_embeddings=config.max_position_embeddings,
                         layer_norm_eps=config.norm_eps, use_parallel_residual=False,
                         tie_word_embeddings=config.tie_word_embeddings, attention_dropout=0.0, hidden_dropout=0.0,
                         bos_token_id=None, eos_token_id=None, pad_token_id=0)
    twin._attn_implementation = "sdpa"
    torch.manual_seed(1)
    return GPTNeoXForCausalLM(twin).eval()


def hf_generate(model, prompt: torch.Tensor, new_tokens: int) -> None:
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=new_tokens, pad_token_id=0, use_cache=True)
    assert out.shape[1] == prompt.shape[1] + new_tokens


def engine_run(model, rows: list[list[int]], new_tokens: int, compile: bool = False) -> None:
    greedy = SamplingOptions(max_new_tokens=new_tokens, temperature=0.0, stop_token_ids=())
    assert all(len(c.token_ids) == new_tokens for c in generate_tokens(model, rows, greedy, compile=compile))


def against_hf(quick: bool, rounds: int) -> dict:
    """Best wall and CPU seconds of each method at batch 1 and 8 (compiled after an untimed compiling run)."""
    name, size = ("ngen4-tiny", "small") if quick else ("ngen4-50m", "tiny")  # "tiny": the preset's own size
    torch.manual_seed(0)
    config = benchmark_config(name, size, PROMPT_TOKENS + NEW_TOKENS)
    model, twin = LMLabForCausalLM(config).eval(), hf_twin(config)
    result = {"model": name + (" (small)" if quick else ""), "parameters": sum(p.numel() for p in model.parameters()),
              "twin_parameters": sum(p.numel() for p in twin.parameters())}
    for batch in (1, 8):
        result[f"b{batch}"] = batch_times(model, twin, torch.randint(0, config.vocab_size, (batch, PROMPT_TOKENS)),
                                          rounds)
    return result


def weights_pass_seconds(model: torch.nn.Module, batch: int, repeats: int = 5) -> float:
    """Best-of-`repeats` seconds of multiplying a (batch × in) input by every distinct matrix parameter of `model` in
    turn (a tied head counted once), each in the fastest of its layouts (W as stored, Wᵀ contiguous, and for several
    rows oneDNN's pack; timed as the engine chooses them: lmlab.generation.packed.seconds_in_a_pass): the floor under
    one decoding step, which must read each weight once. Passes run over all the matrices, so a model larger than the
    cache is read from memory, as in decoding. The embedding matrix counts as read in full, which a tied head does."""
    products, span = [], weight_bytes(model)
    for weight in {id(p): p.detach() for p in model.parameters() if p.dim() == 2}.values():
        x = torch.randn(batch, weight.shape[1])
        layouts = [(torch.mm, weight.T), (torch.mm, weight.t().contiguous())]
        if batch > 1 and packing_available():
            layouts.append((packed_product, onednn_pack(weight)))
        products.append((x, *min(layouts, key=lambda layout: seconds_in_a_pass(layout[0], x, layout[1], span))))

    def one_pass():
        for x, multiply, w in products:
            multiply(x, w)
    return min(timed(one_pass)[0] for _ in range(repeats + 1))


def batch_times(model, twin, prompt: torch.Tensor, rounds: int) -> dict:
    rows = prompt.tolist()
    start = time.perf_counter()
    engine_run(model, rows, NEW_TOKENS, compile=True)
    first_compiled_s = time.perf_counter() - start
    return {**best_of(rounds, {"eager": lambda: engine_run(model, rows, NEW_TOKENS),
                               "compiled": lambda: engine_run(model, rows, NEW_TOKENS, compile=True),
                               "hf_on_lmlab": lambda: hf_generate(model, prompt, NEW_TOKENS),
                               "hf_twin": lambda: hf_generate(twin, prompt, NEW_TOKENS)}),
            "first_compiled_s": first_compiled_s, "weights_pass_s": weights_pass_seconds(model, len(rows))}


COMPILE_CHILD = """
import resource, sys, time, torch
from lmlab import LMLabForCausalLM, preset_config
from lmlab.generation.engine import generate_tokens
from lmlab.generation.sampling import SamplingOptions
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = LMLabForCausalLM(preset_config("ngen4-tiny", eos_token_id=None)).eval()
rows = torch.randint(0, model.config.vocab_size, (1, 128)).tolist()
greedy = SamplingOptions(max_new_tokens=64, temperature=0.0, stop_token_ids=())
def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
seconds = []
for _ in range(2):
    wall, used = time.perf_counter(), cpu()
    generate_tokens(model, rows, greedy, compile=True)
    seconds.append((time.perf_counter() - wall, cpu() - used))
print(seconds[0][0] - seconds[1][0], seconds[0][1] - seconds[1][1])
"""


def compile_seconds() -> dict:
    """Wall and CPU seconds the first compiled generation of ngen4-tiny takes beyond the second, in a child process
    with an empty inductor cache (cold), then in another with that cache (warm)."""
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": folder}
        for state in ("cold", "warm"):
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, "-c", COMPILE_CHILD, str(torch.get_num_threads())], env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            result[state] = {"wall_s": float(out[-2]), "cpu_s": float(out[-1]), "load_average": load}
    return result


def against_n4c(rounds: int) -> dict:
    """n4-tiny at the small size, batch 1, N4_NEW_TOKENS: the cached engine and generate_n4c, interleaved."""
    torch.manual_seed(0)
    config = benchmark_config("n4-tiny", "small", PROMPT_TOKENS + N4_NEW_TOKENS)
    model = LMLabForCausalLM(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, PROMPT_TOKENS))

    def n4c():
        assert len(list(generate_n4c(model, prompt, N4_NEW_TOKENS, eos_token_id=None))) == N4_NEW_TOKENS

    rows = prompt.tolist()
    engine_run(model, rows, N4_NEW_TOKENS, compile=True)  # compiles
    return best_of(rounds, {"eager": lambda: engine_run(model, rows, N4_NEW_TOKENS),
                            "compiled": lambda: engine_run(model, rows, N4_NEW_TOKENS, compile=True),
                            "generate_n4c": n4c})


def measure_targets(quick: bool, rounds: int) -> dict:
    keep_freed_memory()
    return {"machine": machine(), "quick": quick, "compile": compile_seconds(),
            "against_hf": against_hf(quick, rounds), "against_n4c": against_n4c(max(2, rounds - 1))}


def target_rows(measured: dict) -> list[dict]:
    hf = measured["against_hf"]
    rows = []
    for engine in ("eager", "compiled"):
        for batch in (1, 8):
            timing = hf[f"b{batch}"]
            best = {name: times["wall_s"] for name, times in timing.items() if isinstance(times, dict)}
            floor_ms = timing["weights_pass_s"] * 1e3
            for baseline, what in (("hf_twin", "HF GPT-NeoX twin generate()"),
                                   ("hf_on_lmlab", "HF generate() on the lmlab model")):
                rows.append(row(f"decode {engine} vs {what}, b{batch}", best[baseline] / best[engine],
                                TARGETS[engine], f"{hf['model']}, {NEW_TOKENS} new tokens, {engine} "
                                f"{best[engine] / NEW_TOKENS * 1e3:.2f} ms/token; bound "
                                f"{best[baseline] / NEW_TOKENS * 1e3 / floor_ms:.2f}× (one pass over the weights: "
                                f"{floor_ms:.2f} ms)"))
    for state, times in measured["compile"].items():
        rows.append(row(f"compile ngen4-tiny, {state} inductor cache (30 s / wall s)",
                        TARGETS["compile_s"] / times["wall_s"], 1.0,
                        f"{times['wall_s']:.1f} s wall, {times['cpu_s']:.1f} s CPU with the compiler's processes, "
                        f"load {times['load_average']:.1f}"))
    n4 = measured["against_n4c"]
    for engine in ("eager", "compiled"):
        rows.append(row(f"N4 {engine} engine vs generate_n4c, {N4_NEW_TOKENS} new tokens",
                        n4["generate_n4c"]["wall_s"] / n4[engine]["wall_s"], TARGETS["generate_n4c"],
                        f"n4-tiny (small), batch 1, {engine} {n4[engine]['wall_s'] / N4_NEW_TOKENS * 1e3:.2f} "
                        "ms/token"))
    return rows


def rows(quick: bool) -> list[dict]:
    """run_all.py's interface."""
    return target_rows(measure_targets(quick, rounds=3 if quick else 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", help="comma-separated presets (default: every -tiny preset)")
    parser.add_argument("--size", choices=("small", "tiny"), default="small", help="see above (default small)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of the fast methods; the best counts")
    parser.add_argument("--skip-recompute", action="store_true", help="skip the slow full-recomputation baseline")
    parser.add_argument("--targets", action="store_true", help="measure the decoding targets (see above) instead")
    parser.add_argument("--quick", action="store_true", help="with --targets: ngen4-tiny (small) for ngen4-50m")
    args = parser.parse_args()
    if args.targets:
        set_threads(args.threads)
        measured = measure_targets(args.quick, args.rounds)
        print(json.dumps(measured, indent=1))
        print(machine_line(measured["machine"]), file=sys.stderr)
        print_table(target_rows(measured), file=sys.stderr)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = args.presets.split(",") if args.presets else [p.name for p in list_presets() if p.name.endswith("-tiny")]
    batches = [int(b) for b in args.batches.split(",")]
    report = {
        "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "setup": {"size": args.size, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                  "decoding": "greedy, fp32", "rounds": args.rounds,
                  "targets": {"speedup_vs_recompute": 10.0, "speedup_vs_hf_generate": 1.5}},
        "presets": {},
    }
    for name in presets:
        report["presets"][name] = bench_preset(name, args.size, batches, args.prompt_tokens, args.new_tokens,
                                               args.rounds, args.skip_recompute)
        print(json.dumps({name: report["presets"][name]}), file=sys.stderr, flush=True)  # progress
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
