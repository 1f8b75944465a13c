"""Backbone, blocks, patchify, TTAModel geometry and preset sizes (tiny shapes, CPU)."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

from energytta.config import load_config
from energytta.errors import UserError
from energytta.models import tta
from energytta.models.blocks import Block
from energytta.models.heads import build_head
from energytta.models.mar import (GuidedBackbone, MARBackbone, NoiseInputBackbone,
                                  NoiseInputGuidedBackbone, build_backbone)
from energytta.models.geometry import patchify, unpatchify

TOKEN_DIM, MAX_TOKENS, TEXT_DIM = 160, 80, 16


@pytest.fixture(scope="module")
def backbone() -> MARBackbone:
    torch.manual_seed(0)
    return MARBackbone(load_config("tiny").model, TOKEN_DIM, MAX_TOKENS, TEXT_DIM).eval()


def _inputs(B: int = 2, N: int = 40, L: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, N, TOKEN_DIM, generator=g)
    mask = torch.rand(B, N, generator=g) < 0.5
    text = torch.randn(B, L, TEXT_DIM, generator=g)
    return tokens, mask, text, torch.ones(B, L, dtype=torch.bool)


# ------------------------------------------------------------------ patchify
def test_patchify_round_trip_and_time_major_order():
    lat = torch.randn(2, 3, 20, 32)
    tok = patchify(lat, 10, 16)
    assert tok.shape == (2, 2 * 2, 3 * 10 * 16)
    assert torch.equal(unpatchify(tok, 3, 20, 32, 10, 16), lat)
    # time-major: token 1 is (time patch 0, freq patch 1); token 2 is (time patch 1, freq 0)
    assert torch.equal(tok[:, 1].reshape(2, 3, 10, 16), lat[:, :, :10, 16:])
    assert torch.equal(tok[:, 2].reshape(2, 3, 10, 16), lat[:, :, 10:, :16])
    # a shorter clip's tokens are the first tokens of a longer clip
    assert torch.equal(patchify(lat[:, :, :10], 10, 16), tok[:, :2])


def test_patchify_rejects_indivisible_shapes():
    with pytest.raises(UserError, match="patch_t"):
        patchify(torch.randn(1, 1, 25, 32), 10, 16)
    with pytest.raises(UserError, match="patch_f"):
        patchify(torch.randn(1, 1, 20, 40), 10, 16)
    with pytest.raises(ValueError, match="do not fit"):
        unpatchify(torch.randn(1, 3, 160), 1, 20, 32, 10, 16)


# ------------------------------------------------------------------ block
def test_block_key_mask_hides_keys():
    torch.manual_seed(0)
    blk = Block(16, 2, 2.0).eval()
    x = torch.randn(1, 6, 16)
    keep = torch.tensor([[True, True, True, True, False, False]])
    y = blk(x, keep)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 16)
    assert torch.allclose(blk(x2, keep)[:, :4], y[:, :4], atol=1e-6)
    assert not torch.allclose(blk(x2)[:, :4], blk(x)[:, :4])  # without the mask they matter


# ------------------------------------------------------------------ backbone
def test_attention_is_bidirectional(backbone):
    tokens, mask, text, text_mask = _inputs(B=1)
    i = 20
    mask[:, [5, 35]] = False  # visible tokens before and after position i
    z = backbone(tokens, mask, text, text_mask)
    for j in (5, 35):
        t2 = tokens.clone()
        t2[:, j] += 1.0
        z2 = backbone(t2, mask, text, text_mask)
        assert (z2[:, i] - z[:, i]).abs().max() > 1e-4, f"z[{i}] ignores visible token {j}"


def test_encoder_never_reads_masked_tokens(backbone):
    tokens, mask, text, text_mask = _inputs()
    z = backbone(tokens, mask, text, text_mask)
    t2 = tokens.clone()
    t2[mask] = torch.randn(int(mask.sum()), TOKEN_DIM) * 100
    assert torch.equal(backbone(t2, mask, text, text_mask), z)
    t2[mask] = float("nan")  # not even NaNs leak through
    assert torch.equal(backbone(t2, mask, text, text_mask), z)


def test_all_masked_rows_work(backbone):
    tokens, mask, text, text_mask = _inputs()
    z = backbone(tokens, torch.ones_like(mask), text, text_mask)
    assert z.shape == (2, 40, 32) and torch.isfinite(z).all()


def test_unequal_visible_counts_match_rows_run_alone(backbone):
    tokens, _, text, text_mask = _inputs(B=2, L=6)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, ::7] = False  # 6 visible tokens
    mask[1, :25] = False  # 25 visible tokens
    text_mask[0, 3:] = False  # row 0 has a 3-token prompt
    z = backbone(tokens, mask, text, text_mask)
    for b, L in ((0, 3), (1, 6)):
        alone = backbone(tokens[b:b + 1], mask[b:b + 1], text[b:b + 1, :L],
                         text_mask[b:b + 1, :L])
        assert torch.allclose(z[b:b + 1], alone, atol=1e-5), f"row {b} depends on the batch"


def test_max_visible_hint_gives_the_same_output(backbone):
    tokens, _, text, text_mask = _inputs(B=2)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, :9] = False  # 9 visible
    mask[1, 5:17] = False  # 12 visible: the hint is the row maximum
    counted = backbone(tokens, mask, text, text_mask)
    hinted = backbone(tokens, mask, text, text_mask, max_visible=12)
    assert torch.equal(counted, hinted)


def test_drop_text_makes_output_independent_of_text(backbone):
    tokens, mask, text, text_mask = _inputs()
    drop = torch.tensor([True, False])
    z = backbone(tokens, mask, text, text_mask, drop_text=drop)
    other = torch.randn(2, 9, TEXT_DIM)
    z2 = backbone(tokens, mask, other, torch.ones(2, 9, dtype=torch.bool), drop_text=drop)
    assert torch.allclose(z2[0], z[0], atol=1e-5)
    assert not torch.allclose(z2[1], z[1], atol=1e-3)
    # without dropping, the text does matter for row 0
    assert not torch.allclose(backbone(tokens, mask, text, text_mask)[0], z[0], atol=1e-3)


def test_return_hidden_shapes_and_positions(backbone):
    tokens, mask, text, text_mask = _inputs(N=20)
    z, hidden = backbone(tokens, mask, text, text_mask, return_hidden=True)
    assert z.shape == (2, 20, 32)
    assert len(hidden) == len(backbone.decoder_blocks)
    assert all(h.shape == (2, 20, 32) for h in hidden)
    # z = decoder_norm(last hidden) + diffusion positions
    expect = backbone.decoder_norm(hidden[-1]) + backbone.diffusion_pos[:, :20]
    assert torch.allclose(z, expect, atol=1e-6)


def test_input_checks(backbone):
    tokens, mask, text, text_mask = _inputs()
    with pytest.raises(ValueError, match="max_tokens"):
        backbone(torch.randn(1, MAX_TOKENS + 1, TOKEN_DIM), torch.ones(1, MAX_TOKENS + 1,
                 dtype=torch.bool), text[:1], text_mask[:1])
    with pytest.raises(UserError, match="text.max_length"):
        backbone(tokens, mask, torch.randn(2, 129, TEXT_DIM), torch.ones(2, 129, dtype=bool))
    with pytest.raises(ValueError, match="text token"):
        backbone(tokens, mask, text, torch.zeros_like(text_mask))


def test_forward_is_encode_then_decode_among_the_mask_tokens(backbone):
    tokens, mask, text, text_mask = _inputs()
    with torch.no_grad():
        memory = backbone.encode(tokens, mask, text, text_mask)
        assert memory.x.shape == (2, 5 + int((~mask).sum(1).max()), 32)  # text ⊕ visible
        z, hidden = backbone.decode(memory, backbone.mask_tokens(memory))
        assert hidden is None
        assert torch.equal(z, backbone(tokens, mask, text, text_mask))
        # what the decoder sees at masked positions is its mask-token input
        other = backbone.decode(memory, torch.randn(2, 40, 32))[0]
    assert not torch.allclose(z[mask], other[mask])


@pytest.mark.parametrize("flags,cls,extra", [
    ([], MARBackbone, set()),
    (["model.noise_inputs=true"], NoiseInputBackbone, {"noise_proj"}),
    (["model.guidance_embed=true"], GuidedBackbone, {"guidance_proj"}),
    (["model.noise_inputs=true", "model.guidance_embed=true"], NoiseInputGuidedBackbone,
     {"noise_proj", "guidance_proj"})])
def test_variants_are_classes_chosen_at_build_with_the_same_keys(flags, cls, extra):
    model_cfg = load_config("tiny", flags).model
    built = build_backbone(model_cfg, TOKEN_DIM, MAX_TOKENS, TEXT_DIM)
    assert type(built) is cls
    plain_keys = set(MARBackbone(load_config("tiny").model, TOKEN_DIM, MAX_TOKENS,
                                 TEXT_DIM).state_dict())
    added = {k.split(".")[0] for k in set(built.state_dict()) - plain_keys}
    assert added == extra and plain_keys <= set(built.state_dict())  # checkpoints load by key
    for name in {"noise_proj", "guidance_proj"} - extra:  # no unused flags on the module
        assert not hasattr(built, name)
    tokens, mask, text, text_mask = _inputs()
    with torch.no_grad():
        plain = built(tokens, mask, text, text_mask)
        # zero-initialised additions: a variant starts as the plain network
        kw = {"noise": torch.randn(2, 40, TOKEN_DIM)} if "noise_proj" in extra else {}
        if "guidance_proj" in extra:
            kw["guidance"] = torch.tensor([3.0, 2.0])
        assert torch.equal(built(tokens, mask, text, text_mask, **kw), plain)
        if "guidance_proj" not in extra:
            with pytest.raises(UserError, match="guidance-distilled"):
                built(tokens, mask, text, text_mask, guidance=torch.tensor([3.0, 2.0]))


def test_grad_checkpointing_gives_same_output_and_grads():
    cfg = load_config("tiny").model
    torch.manual_seed(0)
    plain = MARBackbone(cfg, TOKEN_DIM, MAX_TOKENS, TEXT_DIM).train()
    cfg.grad_checkpointing = True
    ckpt = MARBackbone(cfg, TOKEN_DIM, MAX_TOKENS, TEXT_DIM).train()
    ckpt.load_state_dict(plain.state_dict())
    tokens, mask, text, text_mask = _inputs()
    grads = []
    for m in (plain, ckpt):
        m.zero_grad()
        out = m(tokens, mask, text, text_mask, drop_text=torch.tensor([False, True]))
        out.square().mean().backward()
        grads.append((out.detach(), m.z_proj.weight.grad.clone(), m.null_text.grad.clone()))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert grads[0][2].abs().sum() > 0  # the null text is trained through dropped rows


# ------------------------------------------------------------------ heads / TTAModel
def test_build_head_rejects_unknown_kind():
    head = load_config("tiny").head
    head.kind = "flow"
    with pytest.raises(UserError, match="diffusion, energy"):
        build_head(head, 160, 32)


@pytest.fixture
def fake_head(monkeypatch):
    """TTAModel geometry does not depend on the head: record what it is built with."""
    calls = []

    def fake(head_cfg, token_dim, cond_dim):
        calls.append((head_cfg.kind, token_dim, cond_dim))
        return nn.Linear(cond_dim, token_dim)

    monkeypatch.setattr(tta, "build_head", fake)
    return calls


def test_tta_model_geometry(fake_head):
    cfg = load_config("tiny")  # 2 s max, 16 kHz, hop 160 -> 200 frames; patches 10 x 16
    model = tta.TTAModel(cfg, text_dim=TEXT_DIM)
    assert tta.latent_shape(cfg, 1.0) == (1, 100, 64)
    assert model.token_dim == 160 and model.max_tokens == 20 * 4
    assert fake_head == [(cfg.head.kind, 160, 32)]
    assert model.tokens_for(1.0) == 40 and model.frames_for(1.0) == 100
    assert model.tokens_for(1.07) == 40 and model.frames_for(1.07) == 100  # whole patches
    assert model.tokens_for(2.0) == model.max_tokens
    with pytest.raises(UserError, match="max_seconds"):
        model.tokens_for(2.5)
    with pytest.raises(UserError, match="shorter than one token"):
        model.tokens_for(0.05)
    tokens, mask, text, text_mask = _inputs()
    assert model(tokens, mask, text, text_mask).shape == (2, 40, 32)


def test_latent_shape_agrees_with_the_mel_codec():
    from energytta.audio.codec import MelCodec

    for overrides in ([], ["audio.sample_rate=22050", "audio.hop_length=256"]):
        cfg = load_config("tiny", overrides)
        codec = MelCodec(cfg)
        for seconds in (0.29, 0.5, 1.0, 1.07, 2.0, 3.3333, 4.0, 9.99):
            assert tta.latent_shape(cfg, seconds) == codec.latent_shape(seconds), seconds


def test_tta_model_rejects_bad_patch_and_codec(fake_head):
    cfg = load_config("tiny", ["model.patch_f=24"])
    with pytest.raises(UserError, match="patch_f"):
        tta.TTAModel(cfg, text_dim=TEXT_DIM)
    cfg = load_config("tiny", ["codec.name=wavelet"])
    with pytest.raises(UserError, match="codec.name"):
        tta.TTAModel(cfg, text_dim=TEXT_DIM)


def test_default_preset_shape(fake_head):
    cfg = load_config("default")
    model = tta.TTAModel(cfg, text_dim=384)
    assert model.tokens_for(4.0) == 160 and model.token_dim == 160


# ------------------------------------------------------------------ preset sizes
IMPACT_SIZES = {"impact_base": 193e6, "impact_large": 427e6}  # IMPACT paper, base / large
IMPACT_TEXT_DIM = 1024 + 768  # Flan-T5-large ⊕ CLAP's RoBERTa-base text tower


def _mar_mlp_head_params(width: int, depth: int, token_dim: int, cond_dim: int) -> int:
    """MAR's SimpleMLPAdaLN (learn_sigma off): time MLP, cond/input projections, AdaLN
    residual blocks (LN + 2 linears + 3-way modulation) and the AdaLN final layer."""
    W = width
    time = 256 * W + W + W * W + W
    proj = cond_dim * W + W + token_dim * W + W
    blocks = depth * (2 * W + 2 * (W * W + W) + 3 * W * W + 3 * W)
    final = W * token_dim + token_dim + 2 * W * W + 2 * W
    return time + proj + blocks + final


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(IMPACT_SIZES))
def test_impact_backbone_plus_mar_head_size(name, audioldm_dir):
    cfg = load_config(name, [f"codec.path={audioldm_dir}"])  # AudioLDM's VAE geometry
    C, T, F = tta.latent_shape(cfg, cfg.audio.max_seconds)
    pt, pf = cfg.model.patch_t, cfg.model.patch_f
    token_dim, max_tokens = C * pt * pf, (T // pt) * (F // pf)
    assert (token_dim, max_tokens) == (128, 256)  # IMPACT: 256 tokens of 128 dims
    with torch.device("meta"):  # no memory, no init cost
        backbone = MARBackbone(cfg.model, token_dim, max_tokens, IMPACT_TEXT_DIM)
    head = _mar_mlp_head_params(cfg.head.width, cfg.head.depth, token_dim, cfg.model.width)
    total = _count(backbone) + head
    assert math.isclose(total, IMPACT_SIZES[name], rel_tol=0.05), f"{name}: {total / 1e6:.1f}M"


@pytest.mark.skipif(importlib.util.find_spec("teachers.diffusion_head") is None,
                    reason="teachers/diffusion_head.py not written yet")
@pytest.mark.parametrize("name", sorted(IMPACT_SIZES))
def test_impact_preset_size_with_real_head(name, audioldm_dir):
    cfg = load_config(name, [f"codec.path={audioldm_dir}"])
    with torch.device("meta"):
        model = tta.TTAModel(cfg, text_dim=IMPACT_TEXT_DIM)
    assert model.token_dim == 128 and model.max_tokens == 256
    total = _count(model)
    assert math.isclose(total, IMPACT_SIZES[name], rel_tol=0.05), f"{name}: {total / 1e6:.1f}M"
