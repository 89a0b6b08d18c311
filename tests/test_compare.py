"""`lmlab compare`: the variant syntax, budgets, the same batches for every variant, a tiny 2-variant × 2-seed
comparison interrupted and resumed, its report read back against the runs' own metrics, and refused requests."""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import statistics
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

import lmlab.compare.plan
import lmlab.compare.runner
import lmlab.train.loop
from lmlab import LMLabForCausalLM
from lmlab.cli import build_parser, main
from lmlab.commands.train import build_config
from lmlab.compare import Budget, Plan, load_variants_file, parse_variant
from lmlab.compare.budget import measure_step_seconds, steps_in, tokens_for_flops
from lmlab.compare.plan import Request, make_plan
from lmlab.compare.summary import mean_std, smoothed
from lmlab.compare.variants import VariantError, check_variants, split_overrides
from lmlab.data.batches import PackedWindows
from lmlab.nn.mlp import ASGG
from lmlab.nn.norms import DyT, LayerNorm
from lmlab.overrides import apply_overrides
from lmlab.presets import preset_config
from lmlab.run_layout import resolve_model_dir
from lmlab.train.distributed import Environment
from lmlab.train.metrics import read_metrics
from lmlab.train.step import resolve_precision

SMALL = ["--set", "hidden_size=32", "--set", "intermediate_size=64", "--set", "num_attention_heads=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Zipf-distributed words w0..w49: learnable, and different per sample."""
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(" ".join(f"w{n % 50}" for n in np.random.default_rng(0).zipf(1.5, size=4000)))
    return path


def compare_args(corpus, out, cache, *variants, budget="tokens=512", seeds="2"):
    return ["compare", *variants, "--budget", budget, "--seeds", seeds, "--data", str(corpus), "--tokenizer",
            "bytes", "--seq-len", "32", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1",
            "--eval-batches", "1", "--checkpoint-every", "2", "--no-progress", "--cache-dir", str(cache), "--out",
            str(out), *SMALL]


VARIANTS = ("gelu=ngen4-tiny", "asgg=ngen4-tiny:mlp=asgg,norm=dyt@layers:0")


# ---------------------------------------------------------------- variant syntax


def test_variant_syntax():
    plain = parse_variant("ngen4-tiny")
    assert (plain.name, plain.preset, plain.overrides) == ("ngen4-tiny", "ngen4-tiny", [])
    named = parse_variant("relu2=yatgpt-tiny:mlp=relu2,norm=dyt@layers:0,2,"
                          'rope_scaling={"type":"linear","factor":2}')
    assert (named.name, named.preset) == ("relu2", "yatgpt-tiny")
    assert named.overrides == ["mlp=relu2", "norm=dyt@layers:0,2", 'rope_scaling={"type":"linear","factor":2}']
    assert named.spec == "yatgpt-tiny:mlp=relu2,norm=dyt@layers:0,2," + 'rope_scaling={"type":"linear","factor":2}'
    assert parse_variant("ngen4-tiny:mlp=asgg").slug == "ngen4-tiny_mlp=asgg"
    assert split_overrides("a=[1, 2],b='x,y',c=d@layers:1,3") == ["a=[1, 2]", "b='x,y'", "c=d@layers:1,3"]


@pytest.mark.parametrize("text,error,message", [
    ("x=", VariantError, "names no preset"),
    ("ngen4-tinyy", ValueError, "Did you mean 'ngen4-tiny'"),
    ("ngen4-tiny:asgg", VariantError, "'asgg' is not KEY=VALUE"),
])
def test_bad_variants_are_rejected(text, error, message):
    with pytest.raises(error, match=message):
        parse_variant(text)


def test_variant_names_must_be_distinct_folders():
    with pytest.raises(VariantError, match="both called"):
        check_variants([parse_variant("a=ngen4-tiny"), parse_variant("a=ngen4-tiny:mlp=asgg")])
    with pytest.raises(VariantError, match="both called"):
        check_variants([parse_variant("a/b=ngen4-tiny"), parse_variant("a_b=ngen4-tiny")])
    with pytest.raises(VariantError, match="at least one"):
        check_variants([])


def test_variants_file(tmp_path):
    path = tmp_path / "variants.yaml"
    path.write_text("relu2: yatgpt-tiny:mlp=relu2\n"
                    "gelu:\n  preset: yatgpt-tiny\n  set: {mlp: gelu, norm@layers:0: dyt}\n  train: {lr: 0.01}\n"
                    "softplus:\n  preset: yatgpt-tiny\n")
    relu2, gelu, softplus = load_variants_file(path)
    assert (relu2.name, relu2.overrides) == ("relu2", ["mlp=relu2"])
    assert (gelu.overrides, gelu.train) == (["mlp=gelu", "norm=dyt@layers:0"], {"lr": 0.01})
    assert (softplus.preset, softplus.overrides) == ("yatgpt-tiny", [])
    path.write_text("- ngen4-tiny\n- ngen4-tiny:mlp=asgg\n")
    assert [v.name for v in load_variants_file(path)] == ["ngen4-tiny", "ngen4-tiny:mlp=asgg"]
    path.write_text("a:\n  preset: ngen4-tiny\n  train: {seq_len: 16}\n")
    with pytest.raises(VariantError, match=r"seq_len.*must be the same for every variant"):
        load_variants_file(path)
    path.write_text("a:\n  preset: ngen4-tiny\n  sett: [mlp=asgg]\n")
    with pytest.raises(VariantError, match="unknown keys"):
        load_variants_file(path)


# ---------------------------------------------------------------- budgets and numbers


def test_budgets():
    assert Budget.parse("tokens=2M") == Budget("tokens", 2e6)
    assert Budget.parse("flops=1.5e15").amount == 1.5e15 and str(Budget.parse("seconds=90")) == "seconds=90"
    for bad, message in [("tokens", "write tokens=N"), ("steps=5", "write tokens=N"), ("tokens=x", "not a number"),
                         ("tokens=-5", "positive")]:
        with pytest.raises(ValueError, match=message):
            Budget.parse(bad)
    # flops: training = 3 × forward FLOPs per token
    assert tokens_for_flops(3 * 1000 * 512, 1000) == 512
    assert steps_in(Budget("flops", 3 * 1000 * 1000), 128, 1000) == 1000 // 128
    assert steps_in(Budget("tokens", 1000), 128, 1.0) == 7
    assert steps_in(Budget("seconds", 10), 128, 1.0, step_seconds=0.3) == 33
    with pytest.raises(ValueError, match="less than one optimizer step"):
        steps_in(Budget("tokens", 100), 128, 1.0)


def test_step_timing_is_positive_and_leaves_the_rng_alone():
    from lmlab.train import config_from_recipe

    config = config_from_recipe("ngen4-tiny", {"seq_len": 16, "batch_size": 2})
    model_config = preset_config("ngen4-tiny", vocab_size=64, hidden_size=32, intermediate_size=64,
                                 num_attention_heads=2)
    before = torch.get_rng_state()
    seconds = measure_step_seconds(config, model_config, Environment(), warmup=1, timed=2)
    assert 0 < seconds < 10 and torch.equal(torch.get_rng_state(), before)


def test_smoothed_loss_and_sample_std():
    losses = [4.0, 2.0, 3.0]
    expected = [4.0, 0.95 * 4.0 + 0.05 * 2.0]
    expected.append(0.95 * expected[1] + 0.05 * 3.0)
    assert smoothed(losses) == pytest.approx(expected)
    mean, std = mean_std([1.0, 2.0, 4.0, math.nan])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 +
                                                                            (4 - 7 / 3) ** 2) / 2))
    assert math.isnan(mean_std([1.0])[1])


# ---------------------------------------------------------------- a whole comparison, interrupted and resumed


@pytest.fixture(scope="module")
def compared(corpus, tmp_path_factory):
    """Run VARIANTS × 2 seeds, interrupted right after the first checkpoint of the third run, then resumed;
    records every batch each run stacks and which runs the trainer was called for."""
    root = tmp_path_factory.mktemp("compare")
    out, cache = root / "out", root / "cache"
    batches: dict[str, list[torch.Tensor]] = {}
    calls: list[tuple[str, bool]] = []
    current = {"run": None}
    real_train, real_stack = lmlab.compare.runner.train, PackedWindows.stack
    real_save = lmlab.train.loop.save_checkpoint

    def train(config, run_dir, resume=False, **kwargs):
        current["run"] = Path(run_dir).relative_to(out).as_posix()
        calls.append((current["run"], resume))
        return real_train(config, run_dir, resume=resume, **kwargs)

    def stack(self, indices):
        batch = real_stack(self, indices)
        batches.setdefault(current["run"], []).append(batch)
        return batch

    def save_then_interrupt(run_dir, step, *args, **kwargs):
        real_save(run_dir, step, *args, **kwargs)
        if len(calls) == 3 and step == 2 and not calls[-1][1]:
            raise KeyboardInterrupt

    patch = pytest.MonkeyPatch()
    patch.setattr(lmlab.compare.runner, "train", train)
    patch.setattr(PackedWindows, "stack", stack)
    patch.setattr(lmlab.train.loop, "save_checkpoint", save_then_interrupt)
    patch.setenv("LMLAB_CACHE", str(root / "default-cache"))  # --cache-dir must be used for everything
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(compare_args(corpus, out, cache, *VARIANTS)) == 130  # interrupted: one line, no traceback
        interrupted = list(calls)
        assert main(compare_args(corpus, out, cache, *VARIANTS)) == 0
    finally:
        torch.set_num_threads(threads)
        patch.undo()
    assert not (root / "default-cache").exists() and len(list(cache.glob("tokens/*.bin"))) == 1
    return {"out": out, "cache": cache, "batches": batches, "interrupted": interrupted,
            "resumed": calls[len(interrupted):]}


def test_interrupted_comparison_resumes_without_retraining_finished_runs(compared):
    assert [run for run, _ in compared["interrupted"]] == [
        "runs/gelu/seed-1337", "runs/asgg/seed-1337", "runs/gelu/seed-1338"]
    # finished runs are skipped; the half-trained one resumes from its checkpoint; the last one starts
    assert compared["resumed"] == [("runs/gelu/seed-1338", True), ("runs/asgg/seed-1338", False)]
    steps = [r["step"] for r in read_metrics(compared["out"] / "runs/gelu/seed-1338") if "loss" in r]
    assert steps == [1, 2, 3, 4]


def test_variants_with_the_same_seed_see_identical_batches(compared):
    batches = {run: torch.cat(b) for run, b in compared["batches"].items()}
    assert len(batches) == 4
    for seed in (1337, 1338):  # training and validation batches alike, across the interruption too
        assert torch.equal(batches[f"runs/gelu/seed-{seed}"], batches[f"runs/asgg/seed-{seed}"])
    assert not torch.equal(batches["runs/gelu/seed-1337"], batches["runs/gelu/seed-1338"])


def test_overrides_reach_the_trained_models(compared):
    gelu = LMLabForCausalLM.from_pretrained(resolve_model_dir(compared["out"] / "runs/gelu/seed-1337"))
    asgg = LMLabForCausalLM.from_pretrained(resolve_model_dir(compared["out"] / "runs/asgg/seed-1337"))
    assert gelu.config.hidden_size == asgg.config.hidden_size == 32  # --set applies to every variant
    assert not any(isinstance(layer.mlp, ASGG) for layer in gelu.model.layers)
    assert all(isinstance(layer.mlp, ASGG) for layer in asgg.model.layers)
    assert [type(layer.mixer_norm) for layer in asgg.model.layers] == [DyT] + [LayerNorm] * (
        asgg.config.num_hidden_layers - 1)


def _expected(run_dir: Path) -> dict:
    """A run's reported numbers, recomputed here from its metrics.jsonl."""
    records = read_metrics(run_dir)
    losses = [r["loss"] for r in records if "loss" in r]
    ema = losses[0]
    for loss in losses[1:]:
        ema = 0.95 * ema + 0.05 * loss
    last_val = [r for r in records if "val_loss" in r][-1]
    wall = [r for r in records if "loss" in r][-1]["elapsed_s"]
    return {"loss_last": losses[-1], "loss_smooth": ema, "val_loss": last_val["val_loss"],
            "val_bpb": last_val["val_bpb"], "tokens_per_s": len(losses) * 128 / wall, "wall_s": wall}


def test_report_table_csv_and_plots(compared):
    out = compared["out"]
    with (out / "report.csv").open() as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["gelu", "asgg"]
    for name, row in rows.items():
        assert (int(row["steps"]), int(row["tokens"]), int(row["runs_finished"])) == (4, 512, 2)
        with torch.device("meta"):
            overrides = ["hidden_size=32", "intermediate_size=64", "num_attention_heads=2"]
            if name == "asgg":
                overrides += ["mlp=asgg", "norm=dyt@layers:0"]
            model = LMLabForCausalLM(apply_overrides(preset_config("ngen4-tiny", vocab_size=256), overrides))
        assert int(row["parameters"]) == sum(p.numel() for p in model.parameters())
        per_seed = [_expected(out / f"runs/{name}/seed-{seed}") for seed in (1337, 1338)]
        for metric in per_seed[0]:
            values = [seed[metric] for seed in per_seed]
            assert all(math.isfinite(v) for v in values)
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-9)
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-6)
        assert float(row["forward_flops_per_token"]) > 0
    assert float(rows["asgg"]["loss_last_mean"]) != float(rows["gelu"]["loss_last_mean"])

    with (out / "runs.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| gelu |") or line.startswith("| asgg |")]
    assert len(table) == 2 + 4  # the variants' rows, then one per run
    mean, std = float(rows["gelu"]["val_loss_mean"]), float(rows["gelu"]["val_loss_std"])
    assert f"{mean:.4f} ± {std:.4f}" in table[0]
    for png in ("val_loss.png", "loss_vs_time.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
        image = matplotlib.image.imread(out / png)
        assert image.shape[0] > 300 and image.shape[1] > 500 and image[..., :3].std() > 0.05


def test_each_recorded_command_reproduces_its_run(compared):
    out = compared["out"]
    lines = (out / "commands.sh").read_text().splitlines()[2:]
    assert lines[0].startswith("lmlab compare gelu=ngen4-tiny") and len(lines) == 5
    plan = Plan.load(out)
    for line, run in zip(lines[1:], plan.runs, strict=True):
        args = build_parser().parse_args(shlex.split(line)[1:])
        config, run_dir = build_config(args)
        assert run_dir == str(out / run.run_dir)
        assert config.to_dict() == run.config({"cache_dir": str(compared["cache"]), "progress": False}).to_dict()
        saved = json.loads((resolve_model_dir(out / run.run_dir) / "train_config.json").read_text())
        # the trainer resolves tokens into steps and auto into the precision it trained in
        width = json.loads((resolve_model_dir(out / run.run_dir) / "config.json").read_text())["hidden_size"]
        expected = {**config.trajectory(), "steps": plan.facts[run.variant]["steps"],
                    "precision": resolve_precision(config.precision, torch.device("cpu"), width)[0]}
        assert {k: v for k, v in saved.items() if k in expected} == expected


def test_rerunning_a_finished_comparison_trains_nothing(compared, corpus, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(lmlab.compare.runner, "train", refuse)
    (compared["out"] / "report.md").unlink()
    assert main(["compare", "--out", str(compared["out"])]) == 0  # the saved plan, no arguments needed
    assert (compared["out"] / "report.md").is_file()


def test_a_different_request_for_the_same_folder_is_refused(compared, corpus, capsys):
    code = main(compare_args(corpus, compared["out"], compared["cache"], *VARIANTS, budget="tokens=1024"))
    assert code == 2
    assert "holds a different comparison (budget: 'tokens=512' before, 'tokens=1024' now" in capsys.readouterr().err


# ---------------------------------------------------------------- refused before any training


@pytest.mark.parametrize("variants,extra,message", [
    (("ngen4-tiny:mixer=selective_copy,num_key_value_heads=2",), [], r"variant 'ngen4-tiny:mixer=.*multi-head only"),
    (("ngen4-tiny:norm=dyt@layers:9",), [], "layer 9 does not exist"),
    (("ngen4-tiny", "nyx-30m"), [], "disagree on seq_len"),
    (("ngen4-tiny",), ["--budget", "tokens=10"], "less than one optimizer step"),
])
def test_impossible_comparisons_are_refused_before_training(corpus, tmp_path, capsys, variants, extra, message):
    args = ["compare", *variants, "--budget", "tokens=512", "--data", str(corpus), "--tokenizer", "bytes",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *extra]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "runs").exists()


def test_seconds_budget_times_each_variant_once_and_trains_fixed_steps(corpus, tmp_path, monkeypatch):
    timed = []

    def fake_timing(config, model_config, env):
        timed.append(model_config.mlp)
        return {"gelu_new": 0.02, "asgg": 0.04}[model_config.mlp]

    monkeypatch.setattr(lmlab.compare.plan, "measure_step_seconds", fake_timing)
    request = Request(variants=[parse_variant(v) for v in VARIANTS], budget=Budget.parse("seconds=1"), seeds=[1, 2],
                      options={"data": [str(corpus)], "tokenizer": "bytes", "seq_len": 32, "batch_size": 4},
                      model_overrides=["hidden_size=32", "intermediate_size=64", "num_attention_heads=2"])
    plan = make_plan(request, log=lambda *_: None, extra={"cache_dir": str(tmp_path)})
    assert timed == ["gelu_new", "asgg"]  # once per variant, not per seed
    assert {run.variant: run.options["steps"] for run in plan.runs} == {"gelu": 50, "asgg": 25}
    assert plan.facts["asgg"]["step_seconds"] == 0.04
    assert [(run.variant, run.seed) for run in plan.runs] == [("gelu", 1), ("asgg", 1), ("gelu", 2), ("asgg", 2)]
