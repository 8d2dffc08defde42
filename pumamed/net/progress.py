"""What a training run shows while it runs: a progress bar per epoch (main process only, on
request) and one summary line per epoch."""

from __future__ import annotations

import numpy as np


class EpochBar:
    """A tqdm bar over an epoch's steps, or nothing when ``enabled`` is false."""

    def __init__(self, enabled: bool, steps: int, epoch: int, epochs: int):
        self.bar = None
        self.steps = 0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, mininterval=2.0,
                            dynamic_ncols=True)

    def step(self, beta: float) -> None:
        self.steps += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.steps % 10 == 0:
                self.bar.set_postfix(beta=f"{beta:.2f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def epoch_summary(record: dict) -> str:
    """One line per epoch: losses, active dimensions, validation figures, throughput."""
    parts = [f"epoch {record['epoch']}", f"loss {record.get('loss', float('nan')):.3f}"]
    for key in ("recon", "kl", "kl_detail", "cls", "detail_swap", "distill", "aux", "walk",
                "global_read", "detail_discrepancy"):
        if key in record:
            parts.append(f"{key} {record[key]:.3f}")
    if "kl_per_dim" in record:
        dims = np.asarray(record["kl_per_dim"])
        parts.append(f"active dims {(dims > 0.01).sum()}/{len(dims)}")
    val = record.get("val") or {}
    if (val.get("auc") or {}).get("macro") is not None:
        parts.append(f"val auc {val['auc']['macro']:.4f}")
    if "recon_mse" in val:
        parts.append(f"val mse {val['recon_mse']:.5f}")
    parts.append(f"{record['images_per_s']:.0f} img/s")
    return " | ".join(parts)
