"""Model directories written by lmlab load in the Hugging Face ecosystem in a process that never imports lmlab:
`auto_map` + `modeling_lmlab.py` with `trust_remote_code=True` (Auto classes, pipeline, PEFT, Trainer, lm-eval's CLI).

Every check runs in a subprocess that imports transformers, peft and lm-eval but not lmlab (the directory's
`modeling_lmlab.py` does, as it would for a user who only `pip install`ed lmlab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from lmlab.cli import main
from lmlab.remote_code import AUTO_MAP, MODULE
from lmlab.run_layout import resolve_model_dir

pytestmark = pytest.mark.hf

PROMPT = "To be, or not to be"

ECOSYSTEM = r"""
import json, sys
import torch
torch.set_num_threads(1)
assert "lmlab" not in sys.modules
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, pipeline)

model_dir, prompt, out_dir = sys.argv[1:4]
assert "lmlab" not in sys.modules
report = {}
config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
report["classes"] = [type(config).__name__, type(model).__name__]
report["model_max_length"] = tokenizer.model_max_length
ids = tokenizer(prompt, return_tensors="pt")
with torch.no_grad():
    report["logits"] = model(**ids).logits[0, -1].tolist()

generator = pipeline("text-generation", model=model_dir, trust_remote_code=True, device="cpu")
report["pipeline"] = generator(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]

from peft import LoraConfig, get_peft_model
adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
base_before = adapted.base_model.model.model.layers[0].mixer.q_proj.base_layer.weight.clone()
optimizer = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.1)
batch = tokenizer([prompt * 3], return_tensors="pt")
losses = []
for _ in range(3):
    loss = adapted(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
report["peft"] = {"trainable": sum(p.numel() for p in adapted.parameters() if p.requires_grad),
                  "total": sum(p.numel() for p in adapted.parameters()), "losses": losses,
                  "base_unchanged": bool(torch.equal(
                      base_before, adapted.base_model.model.model.layers[0].mixer.q_proj.base_layer.weight))}

from datasets import Dataset
fresh = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
pattern = tokenizer("abcabcabcabcabcabcabcabcabcabcab")["input_ids"]
data = Dataset.from_dict({"input_ids": [pattern] * 32, "labels": [pattern] * 32})
probe = torch.tensor([pattern])
before = fresh(probe, labels=probe).loss.item()
args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=8, max_steps=20, learning_rate=5e-3,
                         report_to=[], save_strategy="no", use_cpu=True, gradient_accumulation_steps=2)
Trainer(model=fresh, args=args, train_dataset=data).train()
fresh.eval()
report["trainer"] = {"before": before, "after": fresh(probe, labels=probe).loss.item()}
print(json.dumps(report))
"""

TASK_YAML = """task: even_odd
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: options
doc_to_target: answer
metric_list:
  - metric: acc
"""


def without_lmlab_env() -> dict:
    """The environment of a process in which lmlab is installed (this checkout's sources on the path) but that
    never imports it itself."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def run_fresh(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], env=without_lmlab_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real `lmlab train` run (bytes tokenizer) whose newest checkpoint is the model directory under test."""
    root = tmp_path_factory.mktemp("ecosystem")
    corpus = root / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 200)
    assert main(["train", "--preset", "ngen4-tiny", "--data", str(corpus), "--tokenizer", "bytes", "--steps", "3",
                 "--seq-len", "32", "--batch-size", "4", "--out", str(root / "run"), "--no-progress",
                 "--cache-dir", str(root / "cache"), "--sample-tokens", "0"]) == 0
    return root / "run"


def assert_carries_remote_code(model_dir: Path) -> None:
    assert (model_dir / f"{MODULE}.py").is_file()
    assert json.loads((model_dir / "config.json").read_text())["auto_map"] == AUTO_MAP


def lmlab_logits(model_dir: Path, prompt: str) -> torch.Tensor:
    from lmlab.generation.loading import load_model

    model, tokenizer, _ = load_model(model_dir, device="cpu", dtype="float32")
    with torch.no_grad():
        return model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]


def test_a_training_checkpoint_loads_in_transformers_peft_and_the_trainer_without_importing_lmlab(trained_run,
                                                                                                   tmp_path):
    model_dir = resolve_model_dir(trained_run)
    assert_carries_remote_code(model_dir)
    result = run_fresh(["-c", ECOSYSTEM, str(model_dir), PROMPT, str(tmp_path / "trainer")])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["classes"] == ["LMLabConfig", "LMLabForCausalLM"]
    torch.testing.assert_close(torch.tensor(report["logits"]), lmlab_logits(model_dir, PROMPT), atol=1e-5, rtol=1e-5)
    assert report["model_max_length"] == 512  # ngen4-tiny's position limit, not transformers' "unbounded" 1e30
    assert report["pipeline"].startswith(PROMPT) and len(report["pipeline"]) > len(PROMPT)
    peft = report["peft"]
    assert 0 < peft["trainable"] < peft["total"] / 10 and peft["base_unchanged"]
    assert peft["losses"][-1] < peft["losses"][0]
    assert report["trainer"]["after"] < 0.7 * report["trainer"]["before"]


def test_lm_eval_cli_scores_a_checkpoint_without_importing_lmlab(trained_run, tmp_path):
    """`lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True` on a local YAML task: its
    log-likelihoods equal lmlab's own forward."""
    rows = [{"question": f"Is {i} even?", "options": ["yes", "no"], "answer": i % 2} for i in range(4)]
    (tmp_path / "even.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "even.yaml").write_text(TASK_YAML.format(data=tmp_path / "even.jsonl"))
    model_dir = resolve_model_dir(trained_run)
    run_fresh(["-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},trust_remote_code=True",
               "--tasks", "even_odd", "--include_path", str(tmp_path / "tasks"), "--device", "cpu",
               "--batch_size", "2", "--log_samples", "--output_path", str(tmp_path / "out")])
    [samples] = list((tmp_path / "out").rglob("samples_even_odd_*.jsonl"))
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(lines) == len(rows)

    from lmlab.generation.loading import load_model

    model, tokenizer, _ = load_model(model_dir, device="cpu", dtype="float32")
    for line in lines:
        for argument, [[logprob, _]] in zip(line["arguments"].values(), line["resps"], strict=True):
            context, continuation = argument["arg_0"], argument["arg_1"]
            whole = tokenizer(context + continuation)["input_ids"]
            n = len(whole) - len(tokenizer(context)["input_ids"])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), -1)
            expected = sum(logprobs[j - 1, whole[j]].item() for j in range(len(whole) - n, len(whole)))
            assert float(logprob) == pytest.approx(expected, abs=1e-3)


def test_lora_adapter_checkpoints_and_exports_carry_the_remote_code(trained_run, tmp_path):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("Notes to remember, written down.\n" * 100)
    assert main(["finetune", "--model", str(trained_run), "--lora", "--data", str(corpus), "--steps", "2",
                 "--seq-len", "32", "--batch-size", "2", "--out", str(tmp_path / "lora"), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache"), "--sample-tokens", "0"]) == 0
    adapter_checkpoint = resolve_model_dir(tmp_path / "lora")
    assert_carries_remote_code(adapter_checkpoint)
    assert main(["export", str(tmp_path / "lora"), str(tmp_path / "merged"), "--merge-lora"]) == 0
    assert_carries_remote_code(tmp_path / "merged")
    script = ("import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer; "
              "d = sys.argv[1]; m = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval(); "
              "t = AutoTokenizer.from_pretrained(d, trust_remote_code=True); "
              "print(m(**t(sys.argv[2], return_tensors='pt')).logits[0, -1].tolist())")
    for model_dir in (adapter_checkpoint, tmp_path / "merged"):  # adapters applied, or merged
        logits = json.loads(run_fresh(["-c", script, str(model_dir), PROMPT]).stdout.strip().splitlines()[-1])
        torch.testing.assert_close(torch.tensor(logits), lmlab_logits(tmp_path / "merged", PROMPT), atol=1e-4,
                                   rtol=1e-4)


def test_python_dash_m_lmlab_runs_the_cli():
    result = run_fresh(["-m", "lmlab", "info", "--list"], timeout=120)
    assert "ngen4-tiny" in result.stdout
