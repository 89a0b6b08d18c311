"""The bad-input catalogue: the ways users commonly get lmlab wrong, each run through the command line in this
process, with the exit code it must end with, a fragment of its one-line message, and a check that nothing on disk
changed besides the documented outputs (the case's `changes`). A few entries are inputs that used to fail and must
now work (resuming from another directory, extending a finished run, an older run's pickled trainer state).

Each case ends in one of four outcomes: clear (the exit code and message expected, nothing else touched), traceback
(an exception escaped, or lmlab reported a bug), silent (it succeeded where it should have refused, changed files
it should not have, or did the wrong thing), unclear (it refused, but not with the message expected). The tests
require every case to be clear; `PYTHONPATH=src python tests/test_bad_input_catalogue.py` prints the totals.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.cli import main
from lmlab.run_layout import resolve_model_dir
from lmlab.train.metrics import read_metrics

TINY = ["--preset", "ngen4-tiny", "--tokenizer", "bytes", "--seq-len", "16", "--batch-size", "2", "--lr", "3e-3",
        "--warmup-steps", "2", "--checkpoint-every", "2", "--eval-batches", "1", "--sample-tokens", "0",
        "--no-progress", "--no-tensorboard", "--set", "hidden_size=32", "--set", "intermediate_size=64", "--set",
        "num_attention_heads=2"]
LATEST_STEP = "step-00000004"  # where the shared interrupted run stopped (of 6 steps)


@dataclass
class World:
    """What every case starts from, built once: a corpus, an interrupted run (checkpoints at steps 2 and 4 of 6,
    started with a relative --data from `root`), a finished run of the same settings, and its model directory."""

    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.txt"

    @property
    def interrupted(self) -> Path:
        return self.root / "interrupted"

    @property
    def finished(self) -> Path:
        return self.root / "finished"

    def build(self) -> World:
        words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "away", "home", "."]
        self.corpus.write_text(" ".join(np.random.default_rng(0).choice(words, size=2000)))

        class Stopped(Exception):
            pass

        import lmlab.train.loop as loop

        real_save = loop.save_checkpoint

        def save_then_stop(run_dir, step, *args, **kwargs):
            real_save(run_dir, step, *args, **kwargs)
            if step == 4 and Path(run_dir).name == "interrupted":
                raise Stopped

        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
            patch.chdir(self.root)
            patch.setenv("LMLAB_DEBUG", "1")
            patch.setattr(loop, "save_checkpoint", save_then_stop)
            with contextlib.suppress(Stopped):
                main(["train", *TINY, "--data", "corpus.txt", "--steps", "6", "--out", "interrupted",
                      "--cache-dir", "cache"])
            assert main(["train", *TINY, "--data", "corpus.txt", "--steps", "6", "--out", "finished",
                         "--cache-dir", "cache"]) == 0
        return self


@dataclass
class Case:
    """One bad input. `argv(scratch, world)` gives the command line, run in `scratch` (a fresh folder per case)
    after `setup(scratch, world)`; `changes` are globs (relative to scratch) of files it may write; `check` asserts
    what must hold afterwards; `patch(monkeypatch, scratch)` simulates the environment (a full disk, a NaN)."""

    name: str
    argv: Callable[[Path, World], list[str]]
    code: int
    message: str  # a regular expression the last line of stderr must match (code 0: ignored)
    setup: Callable[[Path, World], None] | None = None
    env: dict = field(default_factory=dict)
    patch: Callable | None = None
    changes: tuple[str, ...] = ()
    check: Callable[[Path, World], None] | None = None
    cwd: str = "."
    seconds: float | None = None


# ---------------------------------------------------------------- helpers that prepare a case's folder

def copy_run(name: str = "interrupted", to: str = "run"):
    def setup(scratch: Path, world: World) -> None:
        shutil.copytree(world.root / name, scratch / to, symlinks=True)
    return setup


def model_dir(scratch: Path, world: World) -> None:
    shutil.copytree(resolve_model_dir(world.finished), scratch / "model")


def both(*setups):
    def setup(scratch: Path, world: World) -> None:
        for step in setups:
            step(scratch, world)
    return setup


def latest(scratch: Path) -> Path:
    return scratch / "run" / "checkpoints" / LATEST_STEP


class Payload:
    """Unpickling this runs `touch PATH`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def plant_pickle(keep_state_files: bool):
    def setup(scratch: Path, world: World) -> None:
        copy_run()(scratch, world)
        if not keep_state_files:
            for name in ("trainer_state.json", "trainer_state.safetensors"):
                (latest(scratch) / name).unlink()
        torch.save({"step": 4, "x": Payload(scratch / "PWNED")}, latest(scratch) / "trainer_state.pt")
    return setup


def legacy_state(scratch: Path, world: World) -> None:
    """The checkpoint's trainer state as lmlab wrote it before the state files (a pickle with numpy tuples)."""
    from lmlab.train.checkpoint import load_trainer_state

    copy_run()(scratch, world)
    state = load_trainer_state(latest(scratch))
    for rng in state["rng"]:
        numpy, python = rng["numpy"], rng["python"]
        rng["numpy"] = ("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                        numpy["cached_gaussian"])
        rng["python"] = (python["version"], tuple(python["words"]), python["gauss_next"])
    torch.save(state, latest(scratch) / "trainer_state.pt")
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        (latest(scratch) / name).unlink()


def edit_json(path_of: Callable[[Path], Path], **values):
    def setup(scratch: Path, world: World) -> None:
        path = path_of(scratch)
        path.write_text(json.dumps({**json.loads(path.read_text()), **values}))
    return setup


def write(name: str, text: str):
    def setup(scratch: Path, world: World) -> None:
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).write_text(text.replace("SCRATCH", str(scratch)))
    return setup


def truncate(name: str, size: int):
    def setup(scratch: Path, world: World) -> None:
        path = scratch / name
        path.write_bytes(path.read_bytes()[:size])
    return setup


def other_preset_config(scratch: Path, world: World) -> None:
    from lmlab.presets import preset_config

    preset_config("nyx-tiny", vocab_size=256).save_pretrained(scratch / "model")


def other_tokenizer(scratch: Path, world: World) -> None:
    from lmlab.data.tokenizers import load_tokenizer

    load_tokenizer("gpt2").save_pretrained(scratch / "model")


def evil_checkpoint(scratch: Path, world: World) -> None:
    torch.save({"model": Payload(scratch / "PWNED")}, scratch / "evil.bin")


def half_deleted(scratch: Path, world: World) -> None:
    """A prune killed midway, as lmlab leaves it now: the doomed folder renamed away, half deleted."""
    from lmlab.train import checkpoint

    copy_run()(scratch, world)

    def killed(path, *args, **kwargs):
        (Path(path) / "model.safetensors").unlink()
        raise SystemExit(137)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint.shutil, "rmtree", killed)
        with contextlib.suppress(SystemExit):
            checkpoint._discard(scratch / "run" / "checkpoints" / "step-00000002")


def full_disk_at_step_4(patch, scratch: Path) -> None:
    from lmlab.train import checkpoint

    real = checkpoint.save_state

    def save_state(state, folder, stem):
        if state["step"] == 4:
            raise OSError(28, "No space left on device", str(folder / f"{stem}.safetensors"))
        real(state, folder, stem)

    patch.setattr(checkpoint, "save_state", save_state)


def diverging_loss(patch, scratch: Path) -> None:
    """Step 4's loss is huge (a checkpoint is written at it), step 5's NaN (whichever loss path the model takes: the
    materialised logits' or the chunked one the trainer asks for)."""
    import lmlab.model

    calls = {"n": 0}

    def diverging(real):
        def loss(*args, **kwargs):
            calls["n"] += 1
            value = real(*args, **kwargs)
            return value * 1e9 if calls["n"] == 4 else value * float("nan") if calls["n"] == 5 else value
        return loss

    for name in ("shifted_cross_entropy", "shifted_linear_cross_entropy"):
        patch.setattr(lmlab.model, name, diverging(getattr(lmlab.model, name)))


# ---------------------------------------------------------------- checks afterwards

def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


def trained_to(steps: int, run: str = "run"):
    def check(scratch: Path, world: World) -> None:
        assert sorted(losses(scratch / run)) == list(range(1, steps + 1)), losses(scratch / run)
    return check


def no_payload(scratch: Path, world: World) -> None:
    assert not (scratch / "PWNED").exists(), "the planted pickle's code ran"


def extended(scratch: Path, world: World) -> None:
    trained_to(8)(scratch, world)
    assert {s: v for s, v in losses(scratch / "run").items() if s <= 6} == losses(world.finished)
    lrs = {r["step"]: r["lr"] for r in read_metrics(scratch / "run") if "lr" in r}
    assert lrs[7] == lrs[8] == pytest.approx(0.1 * 3e-3), lrs  # ngen4-tiny's cosine floor (10% of --lr), held


def state_files_written(scratch: Path, world: World) -> None:
    trained_to(6)(scratch, world)
    final = scratch / "run" / "checkpoints" / "step-00000006"
    assert (final / "trainer_state.json").is_file() and not (final / "trainer_state.pt").exists()


def leftovers_cleared(scratch: Path, world: World) -> None:
    trained_to(6)(scratch, world)
    names = sorted(p.name for p in (scratch / "run" / "checkpoints").iterdir())
    assert names == ["LATEST", "step-00000004", "step-00000006"], names


def earlier_checkpoints_kept(scratch: Path, world: World) -> None:
    names = sorted(p.name for p in (scratch / "new" / "checkpoints").iterdir())
    assert names == ["LATEST", "step-00000002"], names


def no_echo(scratch: Path, world: World) -> None:
    assert not CAPTURED["stdout"], "the refused prompt was printed"


# ---------------------------------------------------------------- the catalogue

def train(*extra: str, out: str = "new"):
    return lambda scratch, world: ["train", *TINY, "--data", str(world.corpus), "--out", out, "--cache-dir", "cache",
                                   *extra]


def resume(*extra: str, out: str = "run"):
    return lambda scratch, world: ["train", "--resume", "--out", out, "--cache-dir", str(scratch / "cache"),
                                   "--no-progress", *extra]


def generate(*extra: str):
    return lambda scratch, world: ["generate", "--model", "model", "--prompt", "hi", "--max-new-tokens", "2", *extra]


TASK = """task: my_task
dataset_path: json
dataset_kwargs:
  data_files:
    test: SCRATCH/rows.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: options
doc_to_target: answer
metric_list:
  - metric: acc
"""
ROWS = '{"question": "1+1?", "options": ["2", "3"], "answer": 0}\n'
OFFLINE = {"HF_HUB_OFFLINE": "1"}
RUN_OUTPUTS = ("run/**", "cache", "cache/**")
NEW_RUN_OUTPUTS = ("new", "new/**", "cache", "cache/**")

CASES = [
    # budgets: refused before any data is read (no cache, no run folder)
    Case("train --steps 0", train("--steps", "0"), 2, r"--steps must be positive, got 0"),
    Case("train --tokens 0", train("--tokens", "0"), 2, r"--tokens must be positive, got 0"),
    Case("train --chinchilla 0", train("--chinchilla", "0"), 2, r"--chinchilla must be positive, got 0"),
    Case("train --steps -5", train("--steps", "-5"), 2, r"--steps must be positive, got -5"),
    Case("finetune --base RUN --steps 0 (old option name)",
         lambda s, w: ["finetune", "--base", str(w.finished), "--data", str(w.corpus), "--steps", "0", "--out", "ft",
                       "--cache-dir", "cache"], 2, r"--steps must be positive, got 0"),
    Case("compare --budget tokens=0",
         lambda s, w: ["compare", "ngen4-tiny", "--budget", "tokens=0", "--data", str(w.corpus), "--tokenizer", "bytes",
                       "--out", "cmp", "--cache-dir", "cache"], 2, r"the amount must be a positive number"),
    # starting a run
    Case("unknown preset", train("--preset", "ngen4-tinyy", "--steps", "2"), 2, r"invalid choice: 'ngen4-tinyy'"),
    Case("missing data file", lambda s, w: ["train", *TINY, "--data", "missing.txt", "--steps", "2", "--out", "new",
                                            "--cache-dir", "cache"], 2, r"no such data file: \S*/missing\.txt"),
    Case("empty corpus", lambda s, w: ["train", *TINY, "--data", "empty.txt", "--steps", "2", "--out", "new",
                                       "--cache-dir", "cache"], 2, r"holds no text: every document is empty",
         setup=write("empty.txt", ""), changes=("cache", "cache/**")),
    Case("--seq-len beyond the position limit", train("--seq-len", "1024", "--steps", "2"), 2,
         r"--seq-len 1024 is longer than the model's position limit \(max_position_embeddings=512\); use --seq-len "
         r"512 or less"),
    Case("mistyped tokenizer, hub offline", train("--tokenizer", "gtp2", "--steps", "2"), 2,
         r"unknown tokenizer 'gtp2'.*not in the Hugging Face cache, and the hub cannot be reached \(HF_HUB_OFFLINE",
         env=OFFLINE, seconds=5),
    Case("hf: dataset, hub offline", lambda s, w: ["train", *TINY, "--data", "hf:someone/corpus", "--steps", "2",
                                                   "--out", "new", "--cache-dir", "cache"], 2,
         r"cannot stream Hugging Face dataset hf:someone/corpus.*hub cannot be reached", env=OFFLINE, seconds=5,
         changes=("cache", "cache/**")),
    Case("unknown --set key", train("--set", "hidden_sise=32", "--steps", "2"), 2, r"hidden_sise"),
    Case("train into an existing run without --resume", train("--steps", "6", out="run"), 2,
         r"already holds a training run \(latest step-00000004\); pass --resume", setup=copy_run()),
    # resuming
    Case("--resume where there is no run", resume(out="nothing"), 2, r"--resume: nothing holds no checkpoint"),
    Case("--resume with another learning rate", resume("--lr", "0.1"), 2,
         r"different configuration \(config\.optimizer\.lr: checkpoint 0\.003, this run 0\.1\)", setup=copy_run(),
         changes=("cache", "cache/**")),
    Case("--resume from another working directory", resume(out="../run"), 0, "", setup=both(copy_run(),
         write("elsewhere/.keep", "")), cwd="elsewhere", changes=RUN_OUTPUTS, check=trained_to(6)),
    Case("--resume naming the data by its absolute path",
         lambda s, w: ["train", *TINY, "--data", str(w.corpus), "--steps", "6", "--out", "run", "--resume",
                       "--cache-dir", "cache"], 0, "", setup=copy_run(), changes=RUN_OUTPUTS, check=trained_to(6)),
    Case("--resume an older run that recorded a relative --data, from elsewhere", resume(out="../run"), 2,
         r"started by an older lmlab, which recorded --data 'corpus\.txt' relative to the directory the run was "
         r"started in.*pass --data with the file's absolute path",
         setup=both(copy_run(), write("elsewhere/.keep", ""),
                    edit_json(lambda s: latest(s) / "train_config.json", data=["corpus.txt"])), cwd="elsewhere"),
    Case("extend a finished run (--resume --steps 8 on 6)", resume("--steps", "8"), 0, "",
         setup=copy_run("finished"), changes=RUN_OUTPUTS, check=extended),
    Case("--resume with a budget that ends before the checkpoint", resume("--steps", "3"), 2,
         r"the budget of 3 steps ends before step-00000004, at step 4; give a larger budget", setup=copy_run(),
         changes=("cache", "cache/**")),
    Case("extend a run whose schedule ends at learning rate 0", resume("--steps", "8"), 2,
         r"ends at step 6 with learning rate 0, which an extension would hold.*lmlab finetune --model \S+ --data",
         setup=both(copy_run("finished"), edit_json(lambda s: s / "run/checkpoints/step-00000006/train_config.json",
                                                    schedule={"name": "linear", "warmup_steps": 2})),
         changes=("cache", "cache/**")),
    # what a run folder may hold
    Case("planted trainer_state.pt (no state files)", resume(), 2,
         r"trainer_state\.pt holds \S*system, not only tensors and plain values; loading it could run code",
         setup=plant_pickle(keep_state_files=False), check=no_payload),
    Case("planted trainer_state.pt beside the state files", resume(), 0, "", setup=plant_pickle(True),
         changes=RUN_OUTPUTS, check=lambda s, w: (no_payload(s, w), trained_to(6)(s, w))),
    Case("older run: pickled trainer_state.pt of tensors and numpy RNG", resume(), 0, "", setup=legacy_state,
         changes=RUN_OUTPUTS, check=state_files_written),
    Case("truncated trainer_state.json", resume(), 2, r"trainer_state\.json is not valid JSON",
         setup=both(copy_run(), truncate(f"run/checkpoints/{LATEST_STEP}/trainer_state.json", 40))),
    Case("LATEST names a checkpoint missing its trainer state", resume(), 2,
         r"names step-00000004, which is incomplete \(missing trainer_state\.safetensors\).*write its name "
         r"\(step-00000002\) into", setup=both(copy_run(), lambda s, w: (latest(s) / "trainer_state.safetensors")
                                               .unlink())),
    Case("a prune killed midway, then --resume", resume(), 0, "", setup=half_deleted, changes=RUN_OUTPUTS,
         check=leftovers_cleared),
    Case("half-deleted checkpoint folder (older lmlab) given to generate",
         lambda s, w: ["generate", "--model", "run/checkpoints/step-00000002", "--prompt", "hi"], 2,
         r"step-00000002 is incomplete: it has no model\.safetensors",
         setup=both(copy_run(), lambda s, w: (s / "run/checkpoints/step-00000002/model.safetensors").unlink())),
    Case("disk full while checkpointing", train("--steps", "4"), 2,
         r"could not write checkpoint step-00000004 in \S+ \(\[Errno 28\] No space left on device.*the earlier "
         r"checkpoints are intact \(LATEST names step-00000002\)", patch=full_disk_at_step_4,
         changes=NEW_RUN_OUTPUTS, check=earlier_checkpoints_kept),
    Case("loss becomes NaN after a diverged checkpoint", train("--steps", "6"), 2,
         r"loss became nan at step 5; stopping\. The last good checkpoint is \S+step-00000002 \(training loss "
         r"[\d.]+ in metrics\.jsonl\); the newest, step-00000004, had diverged already \(loss [\d.e+]+\)",
         patch=diverging_loss, changes=NEW_RUN_OUTPUTS),
    # reading a model
    Case("generate: truncated model.safetensors", generate(), 2,
         r"model\.safetensors cannot be read \(.*\): the file is truncated or corrupt",
         setup=both(model_dir, truncate("model/model.safetensors", 3000))),
    Case("eval: truncated model.safetensors",
         lambda s, w: ["eval", "--model", "model", "--tasks", f"perplexity:{w.corpus}"], 2,
         r"model\.safetensors cannot be read \(.*\): the file is truncated or corrupt",
         setup=both(model_dir, truncate("model/model.safetensors", 3000))),
    Case("config.json of another preset over the weights", generate(), 2,
         r"the weights in model do not fit its config\.json \(preset 'nyx-tiny'\).*put back the one saved",
         setup=both(model_dir, other_preset_config)),
    Case("tokenizer files of another model", generate(), 2,
         r"the tokenizer in model has 50,257 ids but the model's vocabulary is 256",
         setup=both(model_dir, other_tokenizer)),
    Case("generate --stop-id outside the vocabulary", generate("--stop-id", "999"), 2,
         r"token id 999 is outside the model's vocabulary of 256 ids", setup=model_dir),
    Case("prompt longer than the model's context", lambda s, w: ["generate", "--model", "model", "--prompt", "x" * 600],
         2, r"prompt 0 has 600 tokens but the model's context is 512 tokens", setup=model_dir, check=no_echo),
    Case("generate: no such model", generate(), 2, r"no such model or run directory: model"),
    Case("generate --checkpoint (old option name)", lambda s, w: ["generate", "--checkpoint", "model", "--prompt",
                                                                  "hi", "--max-new-tokens", "2"], 0, "",
         setup=model_dir),
    Case("export RUN OUT (old positional form)", lambda s, w: ["export", str(w.finished), "out"], 0, "",
         changes=("out", "out/**"), check=lambda s, w: resolve_model_dir(s / "out")),
    Case("convert: a pickle that runs code", lambda s, w: ["convert", "n4", "evil.bin", "out"], 2,
         r"evil\.bin holds \S*system, not only tensors and plain values; loading it could run code.*re-save its "
         r"tensors as \.safetensors", setup=evil_checkpoint, check=no_payload),
    Case("convert: a truncated checkpoint", lambda s, w: ["convert", "n4", "evil.bin", "out"], 2,
         r"evil\.bin is not a readable PyTorch file", setup=both(evil_checkpoint, truncate("evil.bin", 100))),
    # evaluation tasks
    Case("task YAML with a misspelt key", lambda s, w: ["eval", "--model", "model", "--tasks", "task.yaml"], 2,
         r"task\.yaml: unknown key 'doc_to_txt' in a task YAML; did you mean 'doc_to_text'\?",
         setup=both(model_dir, write("rows.jsonl", ROWS), write("task.yaml", TASK.replace("doc_to_text",
                                                                                           "doc_to_txt")))),
    Case("task template naming a missing field", lambda s, w: ["eval", "--model", "model", "--tasks", "task.yaml"],
         2, r"a template of task my_task names a field its data rows do not have \('questoin' is undefined\)",
         setup=both(model_dir, write("rows.jsonl", ROWS), write("task.yaml", TASK.replace("{{question}}",
                                                                                           "{{questoin}}")))),
]
CAPTURED: dict[str, str] = {}


# ---------------------------------------------------------------- running a case

def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under `folder`: files with their size and modification time, folders by their existence."""
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) if not p.is_dir() else ()
            for p in folder.rglob("*")}


def attempt(case: Case, world: World, scratch: Path) -> tuple[str, str]:
    """(outcome, why) of one case, run in `scratch`."""
    scratch.mkdir(parents=True)
    if case.setup is not None:
        case.setup(scratch, world)
    before = snapshot(scratch)
    argv = case.argv(scratch, world)
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(scratch / case.cwd)
        patch.delenv("LMLAB_DEBUG", raising=False)
        for name, value in case.env.items():
            patch.setenv(name, value)
        if case.patch is not None:
            case.patch(patch, scratch)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        except BaseException as err:  # noqa: BLE001 (whatever escapes is the finding)
            return "traceback", f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    CAPTURED.update(stdout=stdout.getvalue(), stderr=stderr.getvalue())
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if code == 1 or "Traceback" in stderr.getvalue():
        return "traceback", last
    if code == 0 and case.code != 0:
        return "silent", f"exit 0; expected {case.code}"
    if code != case.code or (case.code and not (last.startswith("lmlab ") and re.search(case.message, last))):
        return "unclear", f"exit {code}: {last}"
    after = snapshot(scratch)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
                     and not any(fnmatch.fnmatch(path, pattern) for pattern in case.changes))
    if changed:
        return "silent", f"changed on disk: {changed[:5]}"
    if case.check is not None:
        try:
            case.check(scratch, world)
        except AssertionError as err:
            return "silent", f"check failed: {err}"
    if case.seconds is not None and seconds > case.seconds:
        return "unclear", f"took {seconds:.1f} s (at most {case.seconds} s)"
    return "clear", ""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield World(tmp_path_factory.mktemp("world")).build()
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_ends_clearly(case, world, tmp_path):
    outcome, why = attempt(case, world, tmp_path / "case")
    assert outcome == "clear", f"{outcome}: {why}"


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 25 and len({case.name for case in CASES}) == len(CASES)


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        built = World(Path(folder) / "world")
        built.root.mkdir()
        built.build()
        totals: Counter = Counter()
        for number, case in enumerate(CASES):
            outcome, why = attempt(case, built, Path(folder) / f"case-{number}")
            totals[outcome] += 1
            print(f"{outcome:9} {case.name}" + (f"  ({why})" if why else ""))
    print(f"{len(CASES)} cases: " + ", ".join(f"{totals[o]} {o}" for o in ("clear", "traceback", "silent", "unclear")))
    sys.exit(0 if totals["clear"] == len(CASES) else 1)
