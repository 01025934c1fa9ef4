"""Batched inference without gradients, returning CPU tensors."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def forward_batched(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 1024,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Apply ``model`` in eval mode to (N, C, H, W) images in batches; returns (N, ...) on CPU.

    The model's train/eval mode is restored afterwards.
    """
    x = torch.as_tensor(images)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outs = [model(x[i:i + batch_size].to(dev)).cpu() for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs)
