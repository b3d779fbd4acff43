"""A callback for the multi-node test: records the object ids and steps each rank trained on."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class BatchRecorder(L.Callback):
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.ids: list[str] = []
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.ids.extend(batch["id"])
        self.steps.append(trainer.global_step)

    def on_train_end(self, trainer, module) -> None:
        path = self.folder / f"rank{trainer.global_rank}-from{self.steps[0]}.json"
        path.write_text(json.dumps({"ids": self.ids, "steps": self.steps, "world_size": trainer.world_size}))
