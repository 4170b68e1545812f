"""Sliding-window inference of a volumetric network over a whole volume (MONAI ``sliding_window_inference``).

Gaussian blending (MONAI ``mode="gaussian"``, sigma 1/8 of the window): voxels near a window's border, where the
network sees the least context, weigh less than those at its centre. A volume smaller than the window is
zero-padded by MONAI and cropped back. Windows run on ``device`` (bf16 autocast on CUDA); the blended logits are
accumulated on the CPU, so only one window batch has to fit on the GPU.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

ProgressCallback = Callable[[int, int], None]


def window_count(shape: Sequence[int], patch: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's scan visits (its interval rule: ``int(patch * (1 - overlap))``, at least 1)."""
    total = 1
    for size, roi in zip(shape, patch):
        if size <= roi:
            continue
        step = max(1, int(roi * (1.0 - overlap)))
        total *= math.ceil((size - roi) / step) + 1
    return total


def autocast_for(device: torch.device, bf16: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (halves activation memory of 3D windows); plain float32 elsewhere."""
    if device.type == "cuda" and bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def sliding_window_logits(
    network: nn.Module,
    image: np.ndarray | Tensor,
    patch: Sequence[int],
    overlap: float = 0.25,
    batch_size: int = 1,
    bf16: bool = True,
    progress: ProgressCallback | None = None,
) -> Tensor:
    """(D, H, W) input already in the network's value range -> (K, D, H, W) float32 logits on the CPU.

    The network runs on the device of its parameters, in eval mode (restored afterwards).
    """
    from monai.inferers import sliding_window_inference

    device = next(network.parameters()).device
    x = torch.as_tensor(np.asarray(image, np.float32) if not isinstance(image, Tensor) else image.float())
    x = x.reshape(1, 1, *x.shape[-3:])
    total = window_count(x.shape[2:], patch, overlap)
    done = [0]

    def predictor(window: Tensor) -> Tensor:
        with autocast_for(device, bf16):
            out = network(window).float()
        done[0] = min(total, done[0] + window.shape[0])
        if progress:
            progress(done[0], total)
        return out

    was_training = network.training
    network.eval()
    try:
        logits = sliding_window_inference(x, tuple(int(v) for v in patch), int(batch_size), predictor,
                                          overlap=overlap, mode="gaussian", sw_device=device, device="cpu")
    finally:
        network.train(was_training)
    return torch.as_tensor(logits)[0].float()
