"""Where training numbers go: RUN/metrics.jsonl (one JSON object per record), TensorBoard (RUN/tensorboard), and
Weights & Biases when asked for and installed. Only the main process writes.

Records: {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"} every `log_every` steps
(elapsed_s: seconds spent in training steps since the run began, validation, samples and checkpoints left out);
{"step", "val_loss", "val_ppl", "val_bpb"} at each validation; {"step", "sample"} for text samples.
On resume, records after the checkpoint's step are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmlab.errors import MissingDependencyError
from lmlab.run_layout import METRICS_FILE, TENSORBOARD_DIR


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0, tensorboard: bool = True,
                 wandb: bool = False, run_config: dict | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._tensorboard = self._wandb = None
        if not enabled:
            return
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=resume_step or None)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise MissingDependencyError("--wandb needs the wandb package: pip install wandb (or "
                                             "lmlab[wandb])") from None
            self._wandb = wandb_module.init(project="lmlab", config=run_config, resume="allow",
                                            dir=str(run_dir), name=Path(run_dir).name)

    def log(self, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, step)
            for key, value in values.items():
                if isinstance(value, str):
                    self._tensorboard.add_text(key, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


__all__ = ["METRICS_FILE", "MetricsLogger", "read_metrics"]
