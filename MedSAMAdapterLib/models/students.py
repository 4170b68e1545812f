"""Small student networks for distillation (MONAI UNet), 3D or slice-wise 2D, with the volumetric interface
(B, 1, D, H, W) -> (B, K, D, H, W) so training, sliding-window inference and checkpoints treat them like AutoProSAM.

- ``unet``: a 3D MONAI UNet (isotropic strides). Sensible for a volumetric teacher on roughly isotropic data.
- ``unet2d``: a 2D MONAI UNet applied to every slice (depth folded into the batch). Sensible for a slice-wise
  teacher (an AutoSAM head) and for strongly anisotropic stacks (ACDC: ~10 slices of 1.5 x 1.5 x 10 mm), where a
  3D U-Net's depth downsampling runs out of slices.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from ..errors import InputError

STUDENT_ARCHS = ("unet", "unet2d")
DEFAULT_CHANNELS = (16, 32, 64, 128)


class SliceWise(nn.Module):
    """Runs a 2D network (N, 1, H, W) -> (N, K, H, W) on every slice of (B, 1, D, H, W)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        b, c, d, h, w = x.shape
        y = self.net(x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w))
        return y.view(b, d, y.shape[1], h, w).permute(0, 2, 1, 3, 4)


def build_student(arch: str, num_classes: int, channels: Sequence[int] = DEFAULT_CHANNELS,
                  res_units: int = 1, **_: Any) -> nn.Module:
    """A randomly initialised student of type ``arch`` (``unet`` / ``unet2d``) with ``num_classes`` outputs."""
    from monai.networks.nets import UNet

    if arch not in STUDENT_ARCHS:
        raise InputError(f"unknown student architecture {arch!r}; choose one of {', '.join(STUDENT_ARCHS)}")
    channels = tuple(int(c) for c in channels)
    if len(channels) < 2:
        raise InputError(f"a UNet needs at least 2 levels of channels, got {channels}")
    dims = 3 if arch == "unet" else 2
    net = UNet(spatial_dims=dims, in_channels=1, out_channels=int(num_classes), channels=channels,
               strides=(2,) * (len(channels) - 1), num_res_units=int(res_units), norm="instance")
    return net if dims == 3 else SliceWise(net)


def student_multiple(arch: str, channels: Sequence[int] = DEFAULT_CHANNELS) -> tuple[int, int, int]:
    """(D, H, W) multiples a patch must have (each stride-2 level halves the size)."""
    f = 2 ** (len(tuple(channels)) - 1)
    return (f, f, f) if arch == "unet" else (1, f, f)
