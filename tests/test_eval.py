"""Evaluation: span scoring and perplexity against direct computation, lm-eval runs over the local tasks, bad input."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import REPO, randomise_parameters, save_model_dir, shared_data, tiny_model
from lmlab import list_presets
from lmlab.data.tokenizers import bytes_tokenizer
from lmlab.eval.perplexity import text_perplexity
from lmlab.eval.scoring import score_spans, strided_windows

TINY_PRESETS = [p.name for p in list_presets() if p.name.endswith("-tiny")]
LOCAL_TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "lambada_openai", "mmlu_anatomy",
               "mmlu_college_physics"]
CONTEXT = 320  # evaluation context for the lm-eval runs (byte tokens; PIQA solutions reach 248): keeps them fast

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def byte_model():
    tokenizer = bytes_tokenizer()
    model = tiny_model("ngen4-tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    randomise_parameters(model)
    return model, tokenizer


def direct_loglikelihood(model, tokens: list[int], n: int) -> tuple[float, bool | None]:
    """log p(tokens[-n:] | tokens[:-n]) from one unpadded forward, token by token, and whether every continuation
    token is the greedy choice (None when some choice is a near-tie that other kernels could decide otherwise)."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, -1)
    total, greedy, near_tie = 0.0, True, False
    for j in range(len(tokens) - n, len(tokens)):
        total += logprobs[j - 1, tokens[j]].item()
        greedy &= int(logprobs[j - 1].argmax()) == tokens[j]
        others = torch.cat([logprobs[j - 1, :tokens[j]], logprobs[j - 1, tokens[j] + 1:]])
        near_tie |= abs(logprobs[j - 1, tokens[j]].item() - others.max().item()) < 1e-3
    return total, None if near_tie else greedy


# ---- windows and span scoring

@pytest.mark.parametrize("num_tokens,context,stride", [(2, 4, 2), (10, 4, 4), (23, 8, 3), (100, 16, 16), (9, 9, 1)])
def test_strided_windows_score_every_token_once_within_the_context(num_tokens, context, stride):
    scored = []
    for start, first, end in strided_windows(num_tokens, context, stride):
        assert end - 1 - start <= context and start < first
        scored.extend(range(first, end))
        for t in range(first, end):  # every scored token sees context − stride tokens, or all before it
            assert t - start >= min(t, context - stride + 1)
    assert scored == list(range(1, num_tokens))


def test_disjoint_windows_are_lm_evals_rolling_windows():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(100, 137))
    prefixed = [0] + tokens
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, prefix_token=0, max_seq_len=8,
                                                                         context_len=1)]
    ours = [(prefixed[start:first], prefixed[first:end]) for start, first, end in strided_windows(len(prefixed), 8, 8)]
    assert [(list(c), list(p)) for c, p in theirs] == ours


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_span_scores_equal_direct_forwards(preset):
    model = tiny_model(preset)
    randomise_parameters(model)
    generator = torch.Generator().manual_seed(0)
    spans = []
    for length, n in [(12, 3), (5, 1), (30, 10), (12, 1), (2, 1), (70, 5)]:
        spans.append((torch.randint(0, 101, (length,), generator=generator).tolist(), n))
    spans.append((spans[3][0][:-1] + [7], 1))  # same input as spans[3]: shares its forward row
    for (tokens, n), (logprob, greedy) in zip(spans, score_spans(model, spans, max_batch=3), strict=True):
        expected, expected_greedy = direct_loglikelihood(model, tokens, n)
        assert logprob == pytest.approx(expected, abs=1e-3)
        assert expected_greedy is None or greedy == expected_greedy


def test_a_span_needs_one_token_of_context():
    with pytest.raises(ValueError, match="cannot score its last 3"):
        score_spans(tiny_model("ngen4-tiny"), [([1, 2, 3], 3)])


# ---- perplexity

def test_perplexity_of_a_short_text_equals_one_direct_forward(byte_model):
    model, tokenizer = byte_model
    text = "The cat sat on the mat. Ünïcödé too."
    result = text_perplexity(model, tokenizer, text, context=256)
    ids = [tokenizer.eos_token_id] + tokenizer(text)["input_ids"]
    nll = -direct_loglikelihood(model, ids, len(ids) - 1)[0]
    assert result.windows == 1 and result.tokens == len(ids) - 1
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert result.token_perplexity == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)
    assert result.word_perplexity == pytest.approx(math.exp(nll / 8), rel=1e-5)


def test_stride_one_gives_every_token_a_full_window(byte_model):
    model, tokenizer = byte_model
    text = "sliding windows over a short text"
    context = 8
    ids = [tokenizer.eos_token_id] + tokenizer(text)["input_ids"]
    naive = 0.0
    for t in range(1, len(ids)):
        window = ids[max(0, t - context):t + 1]
        naive -= direct_loglikelihood(model, window, 1)[0]
    result = text_perplexity(model, tokenizer, text, context=context, stride=1)
    assert result.nll == pytest.approx(naive, rel=1e-5)
    assert result.windows == len(ids) - context


def test_perplexity_of_empty_or_missing_files(byte_model, tmp_path):
    from lmlab.eval.perplexity import file_perplexity

    model, tokenizer = byte_model
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        file_perplexity(model, tokenizer, tmp_path / "empty.txt", context=64)
    with pytest.raises(FileNotFoundError, match="no such text file"):
        file_perplexity(model, tokenizer, tmp_path / "absent.txt", context=64)


# ---- lm-eval over the local tasks

@pytest.fixture(scope="module")
def local_run(byte_model):
    from lmlab.eval.run import evaluate

    model, tokenizer = byte_model
    return evaluate(model, tokenizer, LOCAL_TASKS, num_fewshot=1, limit=20, data_dir=shared_data("eval"),
                    max_length=CONTEXT, bootstrap_iters=0, log_samples=True)


def test_lm_eval_runs_every_local_task(local_run):
    harness = local_run["harness"]
    for task in LOCAL_TASKS:
        expected_rows = 5 if task.startswith("mmlu_") else 20  # MMLU subjects have 5 local (dev) rows
        assert harness["n-samples"][task]["effective"] == expected_rows
        assert harness["n-shot"][task] == 1
        assert 0.0 <= harness["results"][task]["acc,none"] <= 1.0
    assert math.isfinite(harness["results"]["lambada_openai"]["perplexity,none"])


def test_lm_eval_log_likelihoods_agree_with_direct_computation(local_run, byte_model):
    model, tokenizer = byte_model
    for task in LOCAL_TASKS:
        for sample in local_run["harness"]["samples"][task][:2]:
            scores = []
            for (context, continuation), [(logprob, greedy)] in zip(sample["arguments"], sample["resps"],
                                                                     strict=True):
                context_ids = tokenizer.encode(context.rstrip(), add_special_tokens=False)
                whole = tokenizer.encode(context + continuation, add_special_tokens=False)
                n = len(whole) - len(context_ids)
                expected, expected_greedy = direct_loglikelihood(model, whole[-(CONTEXT + 1):], n)
                assert logprob == pytest.approx(expected, abs=1e-3), task
                assert expected_greedy is None or greedy == expected_greedy
                scores.append(expected)
            if "acc" in sample and task != "lambada_openai":
                gold = sample["target"] if isinstance(sample["target"], int) else sample["doc"]["gold"]
                assert sample["acc"] == float(max(range(len(scores)), key=scores.__getitem__) == gold), task


def test_winogrande_scores_the_shared_continuation_after_each_option(local_run):
    sample = local_run["harness"]["samples"]["winogrande"][0]
    doc = sample["doc"]
    contexts = [context.rsplit("\n\n", 1)[-1] for context, _ in sample["arguments"]]
    assert contexts == doc["context_options"]
    assert {continuation for _, continuation in sample["arguments"]} == {" " + doc["continuation"]}


def test_local_prompts_are_lm_evals_prompts(local_run):
    """The local YAMLs reproduce lm-eval's built-in prompts (what --source hub runs) on the same rows."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml
    from lm_eval.utils import apply_template

    builtin = Path(lm_eval.__file__).parent / "tasks"
    samples = local_run["harness"]["samples"]
    arc = samples["arc_easy"][0]
    question = arc["doc"]["query"].removeprefix("Question: ")
    template = load_yaml(builtin / "arc" / "arc_easy.yaml", resolve_func=False)["doc_to_text"]
    assert arc["arguments"][0][0].endswith(apply_template(template, {"question": question}))
    piqa = samples["piqa"][0]
    template = load_yaml(builtin / "piqa" / "piqa.yaml", resolve_func=False)["doc_to_text"]
    goal = piqa["doc"]["query"].removeprefix("Question: ").removesuffix("\n")
    assert piqa["arguments"][0][0].endswith(apply_template(template, {"goal": goal}))
    mmlu = samples["mmlu_anatomy"][0]
    template = load_yaml(builtin / "mmlu" / "default" / "_default_template_yaml", resolve_func=False)["doc_to_text"]
    hub_doc = {"question": mmlu["doc"]["question"], "choices": [mmlu["doc"][f"choice{i}"] for i in range(4)]}
    assert mmlu["arguments"][0][0].endswith(apply_template(template, hub_doc))
    assert [c for _, c in mmlu["arguments"]] == [" A", " B", " C", " D"]
    lambada = samples["lambada_openai"][0]
    config = load_yaml(builtin / "lambada" / "lambada_openai.yaml", resolve_func=False)
    hub_doc = {"text": lambada["doc"]["context"] + " " + lambada["doc"]["continuation"]}
    assert lambada["arguments"][0][0].endswith(apply_template(config["doc_to_text"], hub_doc))
    assert lambada["arguments"][0][1] == apply_template(config["doc_to_target"], hub_doc)


def test_hellaswag_preprocessing_matches_lm_evals():
    import importlib.util

    import datasets
    import lm_eval

    from lmlab.eval.docs import hellaswag

    path = Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "utils.py"
    spec = importlib.util.spec_from_file_location("lm_eval_hellaswag_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [json.loads(line) for line in shared_data("eval", "hellaswag_val_1000.jsonl").read_text().splitlines()]
    data = datasets.Dataset.from_list(rows[:200])
    ours, theirs = hellaswag(data), module.process_docs(data)
    for a, b in zip(ours, theirs, strict=True):
        assert (a["query"], a["choices"], a["gold"]) == (b["query"], b["choices"], b["gold"])


def test_mmlu_group_has_57_subjects_in_four_categories():
    from lmlab.eval.tasks import TaskCatalog

    catalog = TaskCatalog("local", shared_data("eval"))
    try:
        loaded = catalog.manager.load(["mmlu"])
    finally:
        catalog.close()
    assert len(loaded["tasks"]) == 57
    assert set(loaded["group_map"]["mmlu"]) == {"mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"}
    assert all(len(task.eval_docs) == 5 for task in loaded["tasks"].values())


def test_a_new_task_is_one_yaml_file(byte_model, tmp_path):
    """A user's multiple-choice task: a YAML file and a JSONL file, no code."""
    from lmlab.eval.run import evaluate

    rows = [{"question": f"Is {i} even?", "options": ["yes", "no"], "answer": i % 2} for i in range(6)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "even.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "even.yaml").write_text(
        "task: even_odd\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n  data_files:\n    test: even.jsonl\n"  # relative: found in the data directory
        "output_type: multiple_choice\n"
        "test_split: test\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: options\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n")
    model, tokenizer = byte_model
    report = evaluate(model, tokenizer, [str(tmp_path / "even.yaml")], data_dir=tmp_path / "data",
                      bootstrap_iters=0, log_samples=True)
    sample = report["harness"]["samples"]["even_odd"][3]
    assert sample["arguments"][1] == ("Question: Is 3 even?\nAnswer:", " no")
    (logprob, _), = sample["resps"][1]
    whole = tokenizer.encode("Question: Is 3 even?\nAnswer: no", add_special_tokens=False)
    assert logprob == pytest.approx(direct_loglikelihood(model, whole, 3)[0], abs=1e-3)
    assert report["harness"]["n-samples"]["even_odd"]["effective"] == 6


def test_generate_until_stops_at_until_and_matches_the_engine(byte_model):
    from lm_eval.api.instance import Instance

    from lmlab.eval.harness import LMLabLM
    from lmlab.generation.engine import Generator
    from lmlab.generation.sampling import SamplingOptions

    model, tokenizer = byte_model
    lm = LMLabLM(model=model, tokenizer=tokenizer)
    free = Generator(model, tokenizer, add_special_tokens=False).generate(
        ["Once upon"], SamplingOptions(max_new_tokens=30, temperature=0.0))[0].text
    until = free[len(free) // 2:len(free) // 2 + 2]
    request = Instance("generate_until", {}, ("Once upon", {"until": [until], "max_gen_toks": 30}), 0)
    assert lm.generate_until([request]) == [free[:free.index(until)]]
    bad = Instance("generate_until", {}, ("x", {"num_beams": 4}), 0)
    with pytest.raises(ValueError, match="unsupported generation_kwargs"):
        lm.generate_until([bad])


def test_rolling_loglikelihood_is_the_disjoint_window_perplexity(byte_model):
    from lm_eval.api.instance import Instance

    from lmlab.eval.harness import LMLabLM

    model, tokenizer = byte_model
    text = "A document longer than one window of the evaluator. " * 3
    lm = LMLabLM(model=model, tokenizer=tokenizer, max_length=32)
    [total] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert total == pytest.approx(-text_perplexity(model, tokenizer, text, context=32, stride=32).nll, rel=1e-6)


def test_lm_eval_finds_the_lmlab_model_by_name(tmp_path):
    from lm_eval.api.registry import get_model

    from lmlab.eval.harness import LMLabLM

    model_dir = save_model_dir(tmp_path / "model", "ngen4-tiny")
    assert get_model("lmlab") is LMLabLM
    lm = LMLabLM.create_from_arg_string(f"pretrained={model_dir},max_length=64", {"batch_size": 4, "device": "cpu"})
    assert lm.batch_size == 4 and lm.max_length == 64
    with pytest.raises(TypeError):
        LMLabLM.create_from_arg_string(f"pretrained={model_dir},dtpye=bfloat16")


# ---- bad input

def test_unknown_task_names_the_close_match(tmp_path):
    from lmlab.eval.tasks import TaskCatalog

    catalog = TaskCatalog("local", tmp_path)
    try:
        with pytest.raises(ValueError, match="unknown task 'arc_esy'. Did you mean arc_easy"):
            catalog.check(["arc_esy"])
    finally:
        catalog.close()


def test_missing_data_file_names_the_data_directory(byte_model, tmp_path):
    from lmlab.eval.run import evaluate

    model, tokenizer = byte_model
    with pytest.raises(FileNotFoundError, match=f"arc_easy.jsonl.*read from {tmp_path}.*--data-dir"):
        evaluate(model, tokenizer, ["arc_easy"], data_dir=tmp_path, limit=2)


def test_too_many_mmlu_exemplars_locally(byte_model):
    from lmlab.eval.run import evaluate

    model, tokenizer = byte_model
    with pytest.raises(ValueError, match="at most 4 exemplars"):
        evaluate(model, tokenizer, ["mmlu_anatomy"], data_dir=shared_data("eval"), num_fewshot=5, limit=1)


def test_without_lm_eval_perplexity_works_and_benchmarks_say_what_to_install(byte_model, tmp_path, monkeypatch):
    import sys

    from lmlab.eval.run import evaluate, format_report

    model, tokenizer = byte_model
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails as if it were not installed
    text = tmp_path / "t.txt"
    text.write_text("some text to score " * 5)
    report = evaluate(model, tokenizer, [f"perplexity:{text}"], max_length=32)
    assert "Bits/byte" in format_report(report)
    with pytest.raises(RuntimeError, match=r"pip install 'lmlab\[eval\]'"):
        evaluate(model, tokenizer, ["arc_easy"])


@pytest.mark.parametrize("spec,error", [("perplexity:/no/such.txt", "no such text file"),
                                        ("/no/such/task.yaml", "no such task file"), ("", "no tasks given")])
def test_bad_task_specs(spec, error):
    from lmlab.eval.run import parse_task_specs

    with pytest.raises((ValueError, FileNotFoundError), match=error):
        parse_task_specs([spec])


# ---- command line

def test_eval_command_prints_a_table_and_writes_json(tmp_path, capfd, monkeypatch):
    from lmlab.cli import main

    monkeypatch.chdir(tmp_path)  # outside any git repository: lm-eval's `git describe` probe must stay silent
    model_dir = save_model_dir(tmp_path / "model", "n4-tiny")
    text = tmp_path / "text.txt"
    text.write_text("A short text to score.\n" * 20)
    code = main(["eval", "--model", str(model_dir), "--tasks", f"arc_easy,perplexity:{text}", "--limit", "4",
                 "--data-dir", str(shared_data("eval")), "--max-length", "128", "--bootstrap-iters", "0"])
    assert code == 0
    out, err = capfd.readouterr()
    assert "|arc_easy" in out and "Bits/byte" in out
    assert "fatal" not in err and "deprecated" not in err
    [report_file] = (model_dir / "eval").glob("results-*.json")
    report = json.loads(report_file.read_text())
    assert report["harness"]["results"]["arc_easy"]["acc,none"] is not None
    assert report["perplexity"][str(text)]["bits_per_byte"] > 0
    assert report["context_length"] == 128


def test_eval_command_unknown_task(tmp_path, capsys):
    from lmlab.cli import main

    model_dir = save_model_dir(tmp_path / "model", "ngen4-tiny")
    assert main(["eval", "--model", str(model_dir), "--tasks", "hellaswagg", "--data-dir", str(tmp_path)]) == 2
    assert "unknown task 'hellaswagg'. Did you mean hellaswag" in capsys.readouterr().err


def test_default_context_is_the_trained_length_then_the_position_limit(tmp_path):
    from transformers import AutoModelForCausalLM

    from lmlab.eval.scoring import context_length

    model_dir = save_model_dir(tmp_path / "model", "ngen4-tiny", max_position_embeddings=96)
    config = AutoModelForCausalLM.from_pretrained(model_dir).config
    assert context_length(config) == 96
    (model_dir / "train_config.json").write_text(json.dumps({"seq_len": 48}))  # as lmlab train's checkpoints hold
    assert context_length(config) == 48
    assert context_length(config, override=20) == 20
    config.max_position_embeddings = None
    (model_dir / "train_config.json").unlink()
    assert context_length(config) == 2048


def test_default_data_dir_is_beside_the_repository(monkeypatch):
    from lmlab.eval.tasks import DATA_ENV, default_data_dir

    monkeypatch.delenv(DATA_ENV, raising=False)
    assert default_data_dir() == REPO.parent / "shared" / "data" / "eval"
    monkeypatch.setenv(DATA_ENV, "/somewhere/else")
    assert str(default_data_dir()) == "/somewhere/else"


def test_hub_source_uses_lm_evals_own_tasks_of_the_same_names(tmp_path, monkeypatch):
    """--source hub indexes lm-eval's built-in tasks (whose prompts the local YAMLs reproduce) and only the user's
    YAMLs besides; building lm-eval's full index takes a minute, so the manager is replaced by a recorder."""
    import lm_eval.tasks

    from lmlab.eval.tasks import TaskCatalog

    seen = {}

    class Recorder:
        def __init__(self, include_path, include_defaults):
            seen["defaults"] = include_defaults
            seen["files"] = sorted(p.name for p in Path(include_path).iterdir())

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Recorder)
    (tmp_path / "mine.yaml").write_text("task: mine\ndataset_path: json\n")
    TaskCatalog("hub", tmp_path, include=[tmp_path / "mine.yaml"]).close()
    assert seen == {"defaults": True, "files": ["0000_mine.yaml"]}
    TaskCatalog("local", tmp_path).close()
    assert seen["defaults"] is False and len(seen["files"]) == 6 + 5 + 57  # 6 tasks, MMLU: 5 groups, 57 subjects


def test_generate_and_eval_read_a_training_run(tmp_path, capsys):
    """The chain a user runs: lmlab train writes a run; generate and eval take the run directory."""
    from lmlab.cli import main

    corpus = REPO / "src" / "lmlab" / "train" / "*.py"
    run = tmp_path / "run"
    assert main(["train", "--preset", "n4-tiny", "--out", str(run), "--data", str(corpus), "--tokenizer", "bytes",
                 "--seq-len", "32", "--batch-size", "4", "--steps", "2", "--eval-batches", "1", "--sample-tokens",
                 "0", "--no-progress", "--no-tensorboard", "--cache-dir", str(tmp_path / "cache"),
                 "--set", "hidden_size=32", "--set", "intermediate_size=64"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(run), "--prompt", "def ", "--max-new-tokens", "8", "--seed", "0",
                 "--ignore-eos"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    text = tmp_path / "text.txt"
    text.write_text("def main():\n    return 0\n" * 4)
    assert main(["eval", "--model", str(run), "--tasks", f"perplexity:{text}"]) == 0
    assert "|32|16|" in capsys.readouterr().out  # the context is the trained length, the stride half of it
