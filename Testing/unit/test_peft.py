"""PEFT surgery: Med-SA adapters (SAM ViT and TinyViT), SD-Trans, LoRA, decoder adapters + HyP-Adpt, recipes."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from MedSAMAdapterLib.errors import InputError, WeightsError
from MedSAMAdapterLib.models.peft import (Adapter, AdaptedTwoWayBlock, HyperPromptAdapter, LoRALinear,
                                          MedSATinyViTBlock, MedSAVitBlock, PeftConfig, PromptContext,
                                          adapter_state_dict, apply_decoder_adapters, apply_lora, apply_medsa,
                                          apply_peft, configure_trainable, is_peft_name, load_adapter_state_dict,
                                          near_square, set_depth_chunk, set_peft_train_mode)
from MedSAMAdapterLib.models.peft.lora import qkv_rows
from MedSAMAdapterLib.models.promptable import sam_modeling
from MedSAMAdapterLib.models.registry import build_model, get_spec
from MedSAMAdapterLib.models.sam_vit import SAM_VIT_CONFIGS, build_image_encoder

POINTS = torch.tensor([[[20.0, 24.0], [40.0, 30.0]]])
LABELS = torch.tensor([[1, 0]])
BOX = torch.tensor([[10.0, 12.0, 50.0, 48.0]])


def adapter_params(dim: int, ratio: float = 0.25) -> int:
    h = int(dim * ratio)
    return dim * h + h + h * dim + dim


def peft_count(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if is_peft_name(n))


def tiny_sam_encoder(seed: int = 0) -> nn.Module:
    """segment-anything ImageEncoderViT: 64 px, patch 16 -> 4x4 tokens, window 3 (padded to 6), global block 1.

    Relative-position tables are random (SAM's are zero-initialised, the checkpoint's are not), so attention
    depends on token positions as in the real model.
    """
    torch.manual_seed(seed)
    enc = sam_modeling().ImageEncoderViT(
        img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0, out_chans=32,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, global_attn_indexes=(1,),
        window_size=3,
    )
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.5)
    return enc.eval()


def randomise_tinyvit_attention(model: nn.Module) -> None:
    """Random position biases and larger qkv / proj weights than the 0.02-std init, as in a trained model."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.normal_(0, 0.5)
            elif ".attn.qkv." in name or ".attn.proj." in name:
                p.normal_(0, 0.3)


def perturb(model: nn.Module, kinds: tuple[str, ...], seed: int = 1) -> None:
    """Give the zero-initialised parts of the PEFT modules named ``kinds`` random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_peft_name(name) and any(k in name for k in kinds):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def decode(model, embedding, **prompt):
    args = dict(points=None, labels=None, box=None, mask_logits=None, multimask=True)
    args.update(prompt)
    return model.decode(embedding, **args)


# ------------------------------------------------------------------------------------------------ adapter module

def test_adapter_vit_b_parameter_count_and_init():
    assert sum(p.numel() for p in Adapter(768).parameters()) == 295_872  # digest §2.5
    x = torch.randn(2, 5, 768)
    assert torch.equal(Adapter(768, skip=True)(x), x)
    assert torch.equal(Adapter(768, skip=False)(x), torch.zeros_like(x))


def test_vit_b_counts_match_the_digest():
    """Med-SA 2D / 3D encoder adapters and LoRA r=4 on ViT-B (digest §2.1, §2.5), built on the meta device."""
    def count(**kw) -> int:
        with torch.device("meta"):
            enc = build_image_encoder(SAM_VIT_CONFIGS["vit_b"], 1024)
            if kw.pop("lora", False):
                apply_lora(enc, rank=4)
            else:
                apply_medsa(enc, **kw)
        return peft_count(enc)

    assert count() == 24 * 295_872 == 7_100_928
    assert count(depth=True, depth_chunk=16) == 36 * 295_872 == 10_651_392
    assert count(lora=True) == 12 * 56 * 768 == 516_096


# ------------------------------------------------------------------------------------------------ Med-SA encoder

def test_medsa_sam_vit_identity_at_init_and_keys():
    base = tiny_sam_encoder()
    model = apply_medsa(copy.deepcopy(base))
    assert all(isinstance(b, MedSAVitBlock) for b in model.blocks)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
    base_keys, keys = set(base.state_dict()), set(model.state_dict())
    assert base_keys < keys and all(is_peft_name(k) for k in keys - base_keys)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(is_peft_name(k) for k in missing)
    assert peft_count(model) == 2 * 2 * adapter_params(32)
    perturb(model, ("peft_space", "peft_mlp"))
    with torch.no_grad():
        assert not torch.allclose(model(x), base(x))


def test_medsa_tinyvit_identity_at_init_and_no_adapters_in_stage0(tiny_model):
    model = copy.deepcopy(tiny_model)
    apply_medsa(model)
    enc = model.image_encoder
    assert not any(is_peft_name(n) for n, _ in enc.layers[0].named_parameters())
    assert all(isinstance(b, MedSATinyViTBlock) for layer in enc.layers[1:] for b in layer.blocks)
    assert peft_count(model) == 2 * (2 * adapter_params(16) + adapter_params(32))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.encode(x), tiny_model.encode(x))
    perturb(model, ("peft_mlp",))
    with torch.no_grad():
        assert not torch.allclose(model.encode(x), tiny_model.encode(x))


def test_medsa_twice_is_refused(tiny_model):
    model = apply_medsa(copy.deepcopy(tiny_model))
    with pytest.raises(InputError, match="already"):
        apply_medsa(model)
    with pytest.raises(InputError, match="no SAM ViT or TinyViT"):
        apply_medsa(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------ SD-Trans

def test_near_square_factorisation():
    assert [near_square(d) for d in (96, 32, 16, 12, 7, 1)] == [(8, 12), (4, 8), (4, 4), (3, 4), (1, 7), (1, 1)]


@pytest.fixture(params=["sam_vit", "tiny_vit"])
def depth_pair(request, tiny_model):
    """(base encoder fn, SD-Trans encoder fn, model) with D=4 slices per volume and position-aware attention."""
    if request.param == "sam_vit":
        base = tiny_sam_encoder()
        model = apply_medsa(copy.deepcopy(base), depth=True, depth_chunk=4)
        return base, model, model
    base = copy.deepcopy(tiny_model)
    randomise_tinyvit_attention(base)
    model = apply_medsa(copy.deepcopy(base), depth=True, depth_chunk=4)
    return base.image_encoder, model.image_encoder, model


def test_sd_trans_identity_at_init_and_shapes(depth_pair):
    base, enc, _ = depth_pair
    x = torch.rand(8, 3, 64, 64)  # 2 volumes x 4 slices
    with torch.no_grad():
        out = enc(x)
        assert torch.equal(out, base(x))
    assert out.shape == base(x).shape
    with pytest.raises(InputError, match="4-slice"):
        with torch.no_grad():
            enc(x[:6])


def test_sd_trans_mixes_slices_and_is_slice_order_sensitive(depth_pair):
    base, enc, model = depth_pair
    x = torch.rand(4, 3, 64, 64)  # one volume of 4 slices
    x2 = x.clone()
    x2[0] += 0.5  # change slice 0 only
    with torch.no_grad():
        assert torch.equal(base(x)[1:], base(x2)[1:])  # the base encoder treats slices independently
        perturb(model, ("peft_depth",))
        assert not torch.allclose(enc(x)[1:], enc(x2)[1:])  # the depth branch does not

    # Slice order, on one adapted block with random tokens (the tiny random encoders make nearly
    # slice-independent features, which would hide the effect at the encoder output).
    block = next(m for m in enc.modules() if isinstance(m, (MedSAVitBlock, MedSATinyViTBlock)))
    dim = block.peft_depth.down.in_features
    tokens = torch.randn(4, 8, 8, dim)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        assert (block(tokens[perm]) - block(tokens)[perm]).abs().max() > 1e-3  # depth attention sees order
        block.peft_depth.up.weight.zero_()
        block.peft_depth.up.bias.zero_()
        torch.testing.assert_close(block(tokens[perm]), block(tokens)[perm])  # without it: per-slice
    set_depth_chunk(model, 2)
    with torch.no_grad():
        assert enc(x).shape == base(x).shape


def test_sd_trans_runs_before_window_partition():
    """A change at one token of slice 0 reaches the other slices at that token's position only.

    If the depth regrouping happened after window partitioning (the public code), windows and slices would be
    mixed and the change would show up elsewhere. Checked on the windowed block (window 3 on a 4x4 grid).
    """
    enc = apply_medsa(tiny_sam_encoder(), depth=True, depth_chunk=4)
    perturb(enc, ("peft_depth",))
    block = enc.blocks[0]
    assert block.window_size == 3
    x = torch.randn(4, 4, 4, 32)
    x2 = x.clone()
    x2[0, 2, 1] += 1.0
    with torch.no_grad():
        diff = (block(x2) - block(x)).abs().sum(-1)[1:]  # slices 1..3, (4, 4) positions
    assert diff[:, 2, 1].min() > 0
    diff[:, 2, 1] = 0
    assert diff.max() < 1e-6


# ------------------------------------------------------------------------------------------------ LoRA

def test_lora_sam_vit_identity_counts_and_k_untouched():
    base = tiny_sam_encoder()
    model = apply_lora(copy.deepcopy(base), rank=4)
    assert peft_count(model) == 2 * 56 * 32  # 56 * dim per block at r=4 (qkv q+v, both MLP linears)
    assert set(base.state_dict()) < set(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
    _check_k_rows(base.blocks[0].attn, model.blocks[0].attn, torch.randn(3, 5, 32))


def test_lora_tinyvit_identity_and_head_major_qkv(tiny_model):
    model = apply_lora(copy.deepcopy(tiny_model), rank=2, alpha=4.0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.encode(x), tiny_model.encode(x))
    attn = model.image_encoder.layers[3].blocks[0].attn  # 4 heads x head_dim 8: per head [q, k, v]
    rows = qkv_rows(attn, 32)
    assert rows["k"][:8].tolist() == list(range(8, 16)) and rows["v"][8:16].tolist() == list(range(40, 48))
    _check_k_rows(tiny_model.image_encoder.layers[3].blocks[0].attn, attn, torch.randn(3, 5, 32))


def _check_k_rows(base_attn: nn.Module, attn: nn.Module, x: torch.Tensor) -> None:
    """After training-like changes, q and v rows move, k rows stay; the output equals the merged formula."""
    lora = attn.qkv
    assert isinstance(lora, LoRALinear)
    with torch.no_grad():
        lora.peft_lora_B.normal_()
        y, y0 = lora(x), base_attn.qkv(x)
        rows = qkv_rows(attn, x.shape[-1])
        assert torch.equal(y[..., rows["k"]], y0[..., rows["k"]])
        assert not torch.allclose(y[..., rows["q"]], y0[..., rows["q"]])
        delta = torch.zeros(lora.out_features, lora.in_features)
        for p, part in enumerate((rows["q"], rows["v"])):
            delta[part] = lora.peft_lora_B[p] @ lora.peft_lora_A[p]
        torch.testing.assert_close(y, y0 + lora.scale * x @ delta.T)


def test_lora_rejects_bad_targets(tiny_model):
    with pytest.raises(InputError, match="subset"):
        apply_lora(copy.deepcopy(tiny_model), targets=("qkv_x",))


# ------------------------------------------------------------------------------------------------ decoder + HyP

def test_decoder_adapters_identity_at_init(tiny_model):
    model = apply_decoder_adapters(copy.deepcopy(tiny_model))
    assert isinstance(model.mask_decoder.transformer.layers[0], AdaptedTwoWayBlock)
    assert peft_count(model) == 315_904 + 2 * adapter_params(256)
    emb = tiny_model.encode(torch.rand(1, 3, 64, 64)).detach()
    with torch.no_grad():
        for prompt in ({"points": POINTS, "labels": LABELS}, {"box": BOX},
                       {"points": POINTS, "labels": LABELS, "box": BOX}):
            for got, want in zip(decode(model, emb, **prompt), decode(tiny_model, emb, **prompt)):
                assert torch.equal(got, want)
        clone = copy.deepcopy(model)  # the copy's hooks must feed the copy's HyP adapters
        for got, want in zip(decode(clone, emb, box=BOX), decode(tiny_model, emb, box=BOX)):
            assert torch.equal(got, want)


def test_hyp_identity_at_init_and_depends_on_prompt():
    hyp = HyperPromptAdapter(dim=256, hidden=64, prompt_dim=256, layers=2)
    x, p1, p2 = torch.randn(2, 7, 256), torch.randn(2, 256), torch.randn(2, 256)
    assert torch.equal(hyp(x, p1), x) and torch.equal(hyp(x, p2), x)
    with torch.no_grad():
        hyp.up.weight.normal_(0, 0.1)
        assert not torch.allclose(hyp(x, p1), hyp(x, p2))
        assert torch.allclose(hyp(x, p1)[:1], hyp(x[:1], p1[:1]), atol=1e-6)  # per-sample weights


def test_hyp_context_pools_prompt_tokens_without_padding(tiny_model):
    model = apply_decoder_adapters(copy.deepcopy(tiny_model))
    layer = model.mask_decoder.transformer.layers[0]
    seen = []
    layer.peft_hyp.register_forward_hook(lambda m, a, o: seen.append(m.context.get()))
    emb = tiny_model.encode(torch.rand(1, 3, 64, 64)).detach()
    with torch.no_grad():
        decode(model, emb, points=POINTS, labels=LABELS)  # 2 points + 1 pad token (no box)
        decode(model, emb, points=POINTS, labels=LABELS, box=BOX)  # 2 points + 2 box corners, no pad
    (sparse1, keep1), (sparse2, keep2) = seen
    assert sparse1.shape[1] == 3 and keep1.tolist() == [[True, True, False]]
    assert sparse2.shape[1] == 4 and keep2.all()
    pooled = layer.peft_hyp.pool_prompt(sparse1, keep1)
    torch.testing.assert_close(pooled, sparse1[:, :2].mean(1))
    with pytest.raises(RuntimeError, match="outside a mask-decoder forward"):
        layer.peft_hyp.context.get()  # released after the call


def test_hyp_changes_decoder_output_with_the_prompt(tiny_model):
    """With only HyP trained away from zero, the *difference* HyP makes depends on the prompt."""
    model = apply_decoder_adapters(copy.deepcopy(tiny_model))
    perturb(model, ("peft_hyp.up",))
    emb = tiny_model.encode(torch.rand(1, 3, 64, 64)).detach()
    with torch.no_grad():
        effects = []
        for prompt in ({"points": POINTS, "labels": LABELS}, {"points": POINTS, "labels": 1 - LABELS}):
            effects.append(decode(model, emb, **prompt)[0] - decode(tiny_model, emb, **prompt)[0])
    assert effects[0].abs().max() > 1e-4 and not torch.allclose(effects[0], effects[1])


def test_prompt_context_is_per_thread():
    import threading

    ctx = PromptContext(num_output_tokens=0)
    got = []
    with ctx.active(torch.ones(1, 2, 4)):
        t = threading.Thread(target=lambda: got.append(ctx._active.get(threading.get_ident())))
        t.start()
        t.join()
        assert ctx.get()[0].shape == (1, 2, 4)
    assert got == [None]


# ------------------------------------------------------------------------------------------------ recipes

RECIPE_CONFIGS = {"medsa": {}, "medsa-3d": {"depth_chunk": 2}, "lora": {}, "decoder": {}}


def test_recipe_counts_tiny(tiny_model):
    enc_adapters = 2 * (2 * adapter_params(16) + adapter_params(32))
    depth_adapters = 2 * adapter_params(16) + adapter_params(32)
    dec_peft = 315_904 + 2 * adapter_params(256)
    decoder = sum(p.numel() for p in tiny_model.mask_decoder.parameters())
    prompt_emb = 5 * 256
    lora = sum(56 * d for d in (16, 16, 32))
    expected = {
        "medsa": enc_adapters + decoder + dec_peft + prompt_emb,
        "medsa-3d": enc_adapters + depth_adapters + decoder + dec_peft + prompt_emb,
        "lora": lora + decoder + prompt_emb,
        "decoder": dec_peft + 5 * 256 + prompt_emb,  # adapters + iou/mask output tokens + point embeddings
    }
    for recipe, extra in RECIPE_CONFIGS.items():
        model = apply_peft(copy.deepcopy(tiny_model), PeftConfig(recipe=recipe, **extra))
        report = configure_trainable(model, recipe)
        assert report.trainable == expected[recipe], recipe
        assert report.total == sum(p.numel() for p in model.parameters())
        assert report.per_module["image_encoder/base"][1] == 0
        assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert recipe in str(report) and "image_encoder/base" in str(report)


def test_recipe_counts_litemedsam_architecture():
    """Pinned for LiteMedSAM's architecture (random weights; counts do not depend on them)."""
    expected = {"medsa": 5_219_588, "medsa-3d": 5_417_492, "lora": 4_163_556, "decoder": 766_720}
    for recipe, extra in RECIPE_CONFIGS.items():
        model = build_model(get_spec("litemedsam"))
        model.weights_sha256 = "0" * 64  # skip hashing the random state
        apply_peft(model, PeftConfig(recipe=recipe, **extra))
        assert configure_trainable(model, recipe).trainable == expected[recipe], recipe


def test_recipe_needs_its_surgery(tiny_model):
    model = copy.deepcopy(tiny_model)
    with pytest.raises(InputError, match="needs its surgery"):
        configure_trainable(model, "medsa")
    with pytest.raises(InputError, match="unknown PEFT recipe"):
        configure_trainable(model, "full")
    with pytest.raises(InputError, match="depth_chunk"):
        PeftConfig(recipe="medsa-3d")
    apply_peft(model, PeftConfig(recipe="decoder"))
    with pytest.raises(InputError, match="already"):
        apply_peft(model, PeftConfig(recipe="decoder"))


@pytest.mark.parametrize("recipe", list(RECIPE_CONFIGS))
def test_training_moves_only_trainable_parameters(tiny_model, recipe):
    torch.manual_seed(0)
    model = apply_peft(copy.deepcopy(tiny_model), PeftConfig(recipe=recipe, **RECIPE_CONFIGS[recipe]))
    configure_trainable(model, recipe)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_peft_train_mode(model)
    images = torch.rand(2, 3, 64, 64)
    target = torch.zeros(1, 1, 64, 64)
    target[..., 16:48, 20:44] = 1.0
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(6):
        emb = model.encode(images)
        logits = [decode(model, emb[i:i + 1], points=POINTS, labels=LABELS, multimask=False)[0] for i in range(2)]
        loss = sum(nn.functional.binary_cross_entropy_with_logits(lg, target) for lg in logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    after = model.state_dict()
    for key, value in before.items():
        if key in trained:
            continue
        assert torch.equal(after[key], value), key  # frozen weights and BatchNorm statistics untouched
    assert any(not torch.equal(after[k], before[k]) for k in trained if is_peft_name(k))


# ------------------------------------------------------------------------------------------------ state dicts

def test_adapter_state_dict_round_trip(tiny_model):
    model = apply_peft(copy.deepcopy(tiny_model), PeftConfig(recipe="medsa"))
    perturb(model, ("peft_",))
    state = adapter_state_dict(model)
    assert state and all(is_peft_name(k) for k in state)
    with_recipe = adapter_state_dict(model, "medsa")
    assert set(state) < set(with_recipe) and any(k.startswith("mask_decoder.iou_token") for k in with_recipe)
    fresh = apply_peft(copy.deepcopy(tiny_model), PeftConfig(recipe="medsa"))
    load_adapter_state_dict(fresh, state)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh.encode(x), model.encode(x))
    with pytest.raises(WeightsError, match="1 missing"):
        load_adapter_state_dict(fresh, {k: v for k, v in list(state.items())[1:]})
    with pytest.raises(WeightsError, match="1 unexpected"):
        load_adapter_state_dict(fresh, {**state, "image_encoder.peft_extra": torch.zeros(1)})
