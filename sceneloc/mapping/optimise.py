"""optimise_head: the head's training loop (AdamW, one-cycle schedule, robust reprojection loss), shared by the
first training of a map and keypoint-guided fine-tuning."""

from __future__ import annotations

from collections.abc import Callable

import torch
from rich.progress import Progress

from sceneloc.device import autocast
from sceneloc.mapping.buffer import Buffer
from sceneloc.mapping.config import MappingConfig
from sceneloc.mapping.loss import mapping_loss
from sceneloc.nn.heads import RegressionHead


def optimise_head(head: RegressionHead, buffer: Buffer, config: MappingConfig, device: torch.device,
                  progress: Progress, description: str, steps: int, lr: tuple[float, float, float],
                  threshold: Callable[[float], float], rows: torch.Tensor | None = None,
                  seed: int = 0) -> tuple[float, dict, list[dict]]:
    """Train `head` on buffer rows (all, or the (M,) indices `rows`) for `steps` AdamW steps of config.batch_size
    rows with a one-cycle schedule lr = (start, peak, end), the robust threshold at training progress t in 0..1
    being threshold(t). Returns (final loss, final statistics, history of ten snapshots)."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr[0], weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr[1], total_steps=steps, div_factor=lr[1] / lr[0], final_div_factor=lr[0] / lr[2],
        cycle_momentum=False, pct_start=0.25)
    generator = torch.Generator().manual_seed(seed)
    pool = torch.arange(len(buffer)) if rows is None else rows
    task = progress.add_task(description, total=steps, info="")
    history, stats, loss = [], {}, torch.tensor(float("nan"))
    frame_K = buffer.frame_K.to(device)
    frame_pose = buffer.frame_cam_from_world.to(device)
    batch = min(config.batch_size, len(pool))
    order, cursor = pool[torch.randperm(len(pool), generator=generator)], 0
    for step in range(steps):
        if cursor + batch > len(order):
            order, cursor = pool[torch.randperm(len(pool), generator=generator)], 0
        chosen = order[cursor:cursor + batch]
        cursor += batch
        fidx = buffer.frame_index[chosen].to(device)
        thr = threshold(step / steps)
        with autocast(device):
            pred = head(buffer.features[chosen].to(device))
        loss, stats = mapping_loss(pred.float(), buffer.pixels[chosen].to(device), frame_K[fidx], frame_pose[fidx],
                                   None if buffer.targets is None else buffer.targets[chosen].to(device),
                                   config, thr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            progress.update(task, completed=step + 1, info=f"loss {loss.item():.2f} valid {stats['valid']:.2f} "
                                                            f"repro {stats['repro_px']:.1f}px thr {thr:.1f}")
        if (step + 1) % max(1, steps // 10) == 0:
            history.append({"step": step + 1, "loss": float(loss.item()), **stats})
    return float(loss.item()), stats, history
