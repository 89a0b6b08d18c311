"""The generation engine: cached decoding equals full recomputation for every preset, batching, stops, text."""

from dataclasses import replace

import pytest
import torch

from conftest import (
    TINY_VOCAB,
    assert_decisive,
    assert_logits_close,
    engine_logits,
    full_forward_logits,
    hf_generate_logits,
    random_path,
    randomise_parameters,
    tiny_model,
)
from lmlab import ConfigError, list_presets, preset_config
from lmlab.data.tokenizers import bytes_tokenizer
from lmlab.generation.engine import BatchDecoder, Generator, generate_tokens
from lmlab.generation.sampling import SamplingOptions
from lmlab.registry import MIXERS

TINY_PRESETS = [p.name for p in list_presets() if p.name.endswith("-tiny")]
GREEDY = dict(temperature=0.0, stop_token_ids=())

# prompt lengths and new tokens: a short case, and one whose prefill, decode and total cross 64-token chunk
# boundaries (Gated DeltaNet's chunked kernel) with rows of different lengths (left padding)
CASES = {"short": ((5,), 12), "chunks": ((70, 3), 66)}


def windowed(preset: str, window: int, **overrides):
    """The preset's tiny model with the attention window of every layer whose mixer has one capped at `window`."""
    config = preset_config(preset)
    layers = [dict(config.layers[i] or {}) if config.layers else {} for i in range(config.num_hidden_layers)]
    for i, spec in enumerate(layers):
        if MIXERS.entry(config.layer_spec(i).mixer).honours("window"):
            spec["window"] = min(window, config.layer_spec(i).window or window)
    try:
        return tiny_model(preset, layers=layers, **overrides)
    except ConfigError as err:  # a preset whose layers take no window has nothing to test here
        pytest.skip(f"{preset} takes no attention window: {err}")


def random_prompts(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, TINY_VOCAB, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_cached_decoding_equals_recomputation_along_a_token_path(preset, case):
    lengths, new = CASES[case]
    model = tiny_model(preset)
    randomise_parameters(model)
    prompts, path = random_prompts(lengths), random_path(len(lengths), new, seed=1)
    cached = engine_logits(model, prompts, path)
    assert len(cached) == new
    assert_logits_close(cached, engine_logits(model, prompts, path, use_cache=False))
    assert_logits_close(cached, full_forward_logits(model, prompts, path))  # each row as it would be alone


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_cached_decoding_equals_recomputation_with_a_window_shorter_than_the_sequence(preset):
    model = windowed(preset, 8)
    randomise_parameters(model)
    prompts, path = random_prompts((20, 9), seed=1), random_path(2, 24, seed=2)
    cached = engine_logits(model, prompts, path)
    assert_logits_close(cached, engine_logits(model, prompts, path, use_cache=False))
    assert_logits_close(cached, full_forward_logits(model, prompts, path))


def test_window_changes_the_output():
    """The windowed test above must exercise the window: it changes the logits of a long sequence."""
    full, short = tiny_model("ngen4-tiny"), windowed("ngen4-tiny", 8)
    randomise_parameters(full)
    randomise_parameters(short)
    prompts, path = random_prompts((20,), seed=1), random_path(1, 24, seed=2)
    difference = (engine_logits(full, prompts, path)[-1] - engine_logits(short, prompts, path)[-1]).abs().max()
    assert difference > 1e-2


@pytest.mark.hf
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_transformers_generate_with_the_cache_equals_recomputation(preset):
    """`model.generate()` from transformers carries lmlab's cache between steps (whichever keyword the installed
    release uses for it): its logits along a forced path equal full recomputation, for a left-padded batch too."""
    model = tiny_model(preset)
    randomise_parameters(model)
    prompts, path = random_prompts((9, 5)), random_path(2, 12, seed=1)
    expected = full_forward_logits(model, prompts, path)
    assert_logits_close(hf_generate_logits(model, prompts, path), expected)
    assert_logits_close(hf_generate_logits(model, prompts, path, use_cache=False), expected)


def test_stop_token_ends_a_row_and_is_not_returned():
    model = tiny_model("ngen4-tiny")
    randomise_parameters(model)
    prompts = random_prompts((6, 4))
    free = generate_tokens(model, prompts, SamplingOptions(max_new_tokens=10, **GREEDY))
    stop = free[0].token_ids[3]
    first = free[0].token_ids.index(stop)
    stopped = generate_tokens(model, prompts, SamplingOptions(max_new_tokens=10, temperature=0.0,
                                                              stop_token_ids=(stop,)))
    assert stopped[0].token_ids == free[0].token_ids[:first]
    assert stopped[0].finish_reason == "stop"
    other = free[1].token_ids
    expected = other[:other.index(stop)] if stop in other else other
    # the other row goes on alone after row 0 left the batch (a batch of one: other kernels, so its greedy choices
    # must not be near-ties)
    assert_decisive(torch.stack(full_forward_logits(model, [prompts[1]], [other])))
    assert stopped[1].token_ids == expected
    assert free[0].finish_reason == "length"


def test_model_eos_is_the_default_stop_token():
    model = tiny_model("ngen4-tiny")
    randomise_parameters(model)
    prompt = random_prompts((6,))[0]
    free = generate_tokens(model, [prompt], SamplingOptions(max_new_tokens=8, **GREEDY))[0].token_ids
    model.config.eos_token_id = free[2]
    out = generate_tokens(model, [prompt], SamplingOptions(max_new_tokens=8, temperature=0.0))[0]
    assert out.token_ids == free[:free.index(free[2])] and out.finish_reason == "stop"


def test_generation_stops_at_the_position_limit():
    model = tiny_model("ngen4-tiny", max_position_embeddings=16)
    out = generate_tokens(model, random_prompts((10, 12)), SamplingOptions(max_new_tokens=50, **GREEDY))
    assert [len(c.token_ids) for c in out] == [5, 5]  # 12 + 4 fed tokens fill 16 positions; the 5th is never fed
    assert {c.finish_reason for c in out} == {"context"}


def test_seed_reproduces_sampling_and_different_seeds_differ():
    model = tiny_model("n4-tiny")
    randomise_parameters(model, scale=0.05)  # flat distributions: samples vary
    prompts = random_prompts((5, 8))

    def run(seed):
        options = SamplingOptions(max_new_tokens=20, temperature=1.5, top_k=0, seed=seed, stop_token_ids=())
        return [c.token_ids for c in generate_tokens(model, prompts, options)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_the_model_mode_is_restored_after_generation():
    model = tiny_model("ngen4-tiny").train()
    generate_tokens(model, random_prompts((4,)), SamplingOptions(max_new_tokens=3, **GREEDY))
    assert model.training


# ---- text

@pytest.fixture(scope="module")
def text_generator():
    tokenizer = bytes_tokenizer()
    model = tiny_model("ngen4-tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    randomise_parameters(model, scale=0.05)
    return Generator(model, tokenizer)


def test_streamed_pieces_join_to_the_completion_text(text_generator):
    options = SamplingOptions(max_new_tokens=60, temperature=1.0, top_k=0, seed=0, stop_token_ids=())
    pieces = list(text_generator.stream("Héllo wörld", options))
    completion = text_generator.generate(["Héllo wörld"], options)[0]
    assert "".join(pieces) == completion.text


def test_stop_string_cuts_the_text(text_generator):
    options = SamplingOptions(max_new_tokens=60, temperature=1.0, top_k=0, seed=1, stop_token_ids=())
    full = text_generator.generate(["abc"], options)[0].text
    stop = full[20:22]
    cut = full[:full.index(stop)]
    streamed = []
    result = text_generator.generate(["abc"], replace(options, stop=(stop,)),
                                     on_text=lambda row, piece: streamed.append(piece))[0]
    assert result.text == cut and result.finish_reason == "stop"
    assert "".join(streamed) == cut
    assert len(result.token_ids) < 60


def test_batched_text_generation_equals_one_by_one(text_generator):
    options = SamplingOptions(max_new_tokens=12, **GREEDY)
    prompts = ["a", "a longer prompt", "mid size"]
    together = text_generator.generate(prompts, options)
    alone = [text_generator.generate([p], options)[0] for p in prompts]
    assert [c.text for c in together] == [c.text for c in alone]


def test_empty_prompt_is_an_error(text_generator):
    with pytest.raises(ValueError, match="prompt is empty"):
        text_generator.generate([""], SamplingOptions(max_new_tokens=2))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generate_tokens(text_generator.model, [[]], SamplingOptions(max_new_tokens=2))


def test_prompt_longer_than_the_context_is_an_error():
    model = tiny_model("ngen4-tiny", max_position_embeddings=16)
    with pytest.raises(ValueError, match="prompt 1 has 17 tokens but the model's context is 16"):
        BatchDecoder(model, random_prompts((3, 17)), SamplingOptions())


@pytest.mark.parametrize("bad,match", [(dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
                                       (dict(top_k=-2), "top_k"), (dict(min_p=1.5), "min_p"),
                                       (dict(repetition_penalty=0), "repetition_penalty"),
                                       (dict(max_new_tokens=-1), "max_new_tokens"), (dict(stop=("",)), "stop")])
def test_bad_sampling_options(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingOptions(**bad)


# ---- command line

def test_generate_command_streams_the_completion(tmp_path, capsys):
    from conftest import save_model_dir
    from lmlab.cli import main
    from lmlab.generation.loading import load_model

    model_dir = save_model_dir(tmp_path / "model", "n4-tiny")
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "step-00000001").symlink_to(model_dir)
    (run / "LATEST").write_text("step-00000001\n")
    assert main(["generate", "--model", str(tmp_path / "run"), "--prompt", "Hello", "--max-new-tokens", "12",
                 "--greedy", "--ignore-eos", "--device", "cpu", "--dtype", "float32"]) == 0
    captured = capsys.readouterr()
    model, tokenizer, _ = load_model(model_dir)
    expected = Generator(model, tokenizer).generate(["Hello"], SamplingOptions(max_new_tokens=12, **GREEDY))[0]
    assert captured.out == "Hello" + expected.text + "\n"
    assert "12 tokens" in captured.err and "finished: length" in captured.err


def test_generate_command_batch_and_bad_input(tmp_path, capsys):
    from conftest import save_model_dir
    from lmlab.cli import main

    model_dir = save_model_dir(tmp_path / "model", "ngen4-tiny", max_position_embeddings=32)
    assert main(["generate", "--model", str(model_dir), "--prompt", "a", "--prompt", "bc", "--num-samples", "2",
                 "--max-new-tokens", "3", "--seed", "1", "--no-echo"]) == 0
    assert capsys.readouterr().out.count("=== ") == 4
    assert main(["generate", "--model", str(model_dir), "--prompt", ""]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["generate", "--model", str(model_dir), "--prompt", "x" * 40]) == 2
    assert "has 40 tokens but the model's context is 32 tokens" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    assert "no such model or run directory" in capsys.readouterr().err
