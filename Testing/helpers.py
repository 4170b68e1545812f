"""Shared test helpers: deterministic stand-in models and synthetic MRML scenes (no test functions here).

``BrightRegionModel`` is a test double with the real ``encode`` / ``decode`` interface that "segments" the
bright connected region under a positive click, or the bright voxels inside a box. Its embedding is the
model-space image itself (the SAM pixel normalisation undone), so what it returns depends on the voxels the
engine fed it: a click that lands on the wrong voxel, or a box on the wrong slice, gives a wrong mask.
"""

from __future__ import annotations

import types

import numpy as np
import torch
from scipy import ndimage

SAM_MEAN, SAM_STD = 123.675, 58.395


class BrightRegionModel(torch.nn.Module):
    """Deterministic, intensity-aware stand-in for a promptable SAM (see module docstring).

    * positive click on a bright pixel -> that pixel's bright connected component;
      positive click on a dark pixel -> a disk of ``radius`` model pixels;
    * box -> bright pixels inside the box (one pixel of slack);
    * negative click -> removes the bright component under it (or a disk), never adds.

    Model input is ``image_size``; logits come back at the same resolution (``embedding_size`` = S / 4 so the
    engine's low-res size is 4 x that = S).
    """

    def __init__(self, image_size: int = 64, threshold: float = 0.6, radius: float = 2.0):
        super().__init__()
        self.spec = types.SimpleNamespace(name="bright-region-test", image_size=image_size,
                                          normalization="sam_imagenet", sha256=None)
        self.embedding_size = image_size // 4
        self.image_encoder = torch.nn.Identity()
        self._anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # a device for the embedder
        self.weights_sha256 = None
        self.threshold = threshold
        self.radius = radius
        self.encode_calls = 0
        self.decode_calls = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encode_calls += len(images)
        brightness = (images[:, :1] * SAM_STD + SAM_MEAN) / 255.0  # channel 0 back on the display scale, 0..1
        # decode reads channel 0; the second gives the embedding a direction, which propagation's appearance
        # check compares (bright answers look like a bright object, dark ones like its background)
        return torch.cat([brightness, 1.0 - brightness], dim=1)

    def decode(self, embedding, points, labels, box, mask_logits, multimask, text=None):
        self.decode_calls += 1
        image = embedding[0, 0].float().cpu().numpy()
        bright = image > self.threshold
        components, _ = ndimage.label(bright)
        size = image.shape[0]
        yy, xx = np.mgrid[:size, :size]
        mask = np.zeros((size, size), bool)
        if box is not None:
            x0, y0, x1, y1 = box[0].tolist()
            inside = (xx >= np.floor(x0) - 1) & (xx <= np.ceil(x1) + 1) & (yy >= np.floor(y0) - 1) & (yy <= np.ceil(y1) + 1)
            mask |= bright & inside
        if points is not None:
            for (x, y), label in zip(points[0].tolist(), labels[0].tolist()):
                r, c = int(np.clip(np.floor(y), 0, size - 1)), int(np.clip(np.floor(x), 0, size - 1))
                region = components == components[r, c] if bright[r, c] else \
                    (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= self.radius ** 2
                if label == 1:
                    mask |= region
                else:
                    mask &= ~region
        logits = torch.full((size, size), -10.0)
        logits[torch.from_numpy(mask)] = 10.0
        count = 3 if multimask else 1
        return logits.expand(1, count, size, size).clone(), torch.full((1, count), 0.95)


def oblique_flipped_ijk_to_ras(spacing=(0.8, 1.3, 2.5), origin=(40.0, -25.0, 12.0)) -> np.ndarray:
    """IJKToRAS with flipped axes, a 25/-30 degree oblique rotation and anisotropic spacing."""
    a, b = np.deg2rad(25.0), np.deg2rad(-30.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    direction = rz @ rx @ np.diag([-1.0, 1.0, -1.0])  # i and k flipped before the rotation
    m = np.eye(4)
    m[:3, :3] = direction * np.asarray(spacing, float)[None, :]
    m[:3, 3] = origin
    return m


class NamedRegionModel(BrightRegionModel):
    """BrightRegionModel that knows one structure name and records the text each decode got."""

    def __init__(self):
        super().__init__()
        self.texts = []

    def understands(self, text):
        return text is not None and text.lower() == "ball"

    def decode(self, embedding, points, labels, box, mask_logits, multimask, text=None):
        self.texts.append(text)
        return super().decode(embedding, points, labels, box, mask_logits, multimask)


def ball_array(shape=(24, 40, 44), center=(12, 20, 22), radius_mm=11.0, spacing=(0.8, 1.3, 2.5)):
    """(image float32 (k, j, i), bool ball mask) with a ball of ``radius_mm`` in physical space."""
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    si, sj, sk = spacing
    mask = ((i - center[2]) * si) ** 2 + ((j - center[1]) * sj) ** 2 + ((k - center[0]) * sk) ** 2 <= radius_mm ** 2
    rng = np.random.default_rng(0)
    image = np.where(mask, 200.0, 20.0) + rng.normal(0, 3, shape)
    return image.astype(np.float32), mask


def new_scene():
    """An MRML scene with the slice-orientation presets Slicer's application adds (for slice nodes)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    return scene


def slice_node(scene, orientation: str, ras_center, size=(256, 256)):
    """A slice node (Axial / Sagittal / Coronal) of ``scene`` centred on ``ras_center``."""
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    assert node.SetOrientation(orientation)
    node.SetDimensions(size[0], size[1], 1)
    node.SetFieldOfView(size[0] * 0.5, size[1] * 0.5, 1)
    node.UpdateMatrices()
    node.JumpSliceByCentering(*[float(v) for v in ras_center])
    return node
