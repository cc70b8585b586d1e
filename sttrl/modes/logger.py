"""The one logger both modes use: a progress bar (--progress), TensorBoard scalars
(--tensorboard, under output_dir/tb) and Weights & Biases (--wandb, offline without
WANDB_API_KEY). A mode opens it once its engine is up and calls `log` once per unit of work
(a question, or a rollout batch)."""
from __future__ import annotations

import os
from pathlib import Path

from sttrl.errors import UserError
from sttrl.settings import LoopSettings


class RunLogger:
    """Per-unit scalars to TensorBoard and wandb, and the bar's progress and status line."""

    def __init__(self, loop: LoopSettings, config: dict, total: int, done: int, desc: str,
                 unit: str):
        """`config`: the resolved config wandb records; `total`, `done`: the bar's units (a
        resumed run starts at `done`), which it calls `desc` and `unit` ("questions", "q")."""
        out = Path(loop.output_dir)
        self.tb = self.wandb = self.bar = None
        if loop.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: "
                                "pip install tensorboard") from None
            self.tb = SummaryWriter(str(out / "tb"))
        if loop.wandb:
            try:
                import wandb
            except ImportError:
                raise UserError("--wandb needs the wandb package: pip install wandb") from None
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            self.wandb = wandb.init(project="sttrl", dir=str(out), mode=mode, config=config)
        if loop.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=desc, unit=unit, dynamic_ncols=True)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self, scalars: dict[str, float], step: int, status: str) -> None:
        """One unit done: its scalars at `step`, and the bar one further showing `status`."""
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.bar is not None:
            self.bar.set_postfix_str(status)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
