"""Iterative parallel decoding: reveal-once, determinism, CFG paths, known tokens, schedules."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from energytta.config import load_config
from energytta.errors import UserError
from energytta.masking import cosine_num_masked
from energytta.sampling import DecodeSettings, cfg_scale_at, decode, masked_after

D_TOK, D_TEXT = 3, 4


class FakeBackbone(nn.Module):
    """Follows MARBackbone.forward; z = [position, row, drop flag, f(visible tokens, text)].

    Channels 0-1 let the fake head tell which (row, position) it is asked to sample.
    Records every call's mask, row count and drop_text.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = nn.Linear(D_TOK + D_TEXT, 3)
        self.calls: list[dict] = []

    def forward(self, tokens, mask, text, text_mask, drop_text=None, return_hidden=False,
                max_visible=None):
        B, N, _ = tokens.shape
        self.calls.append({"mask": mask.clone(), "rows": B, "drop": drop_text,
                           "text_len": text.shape[1]})
        m = text_mask.unsqueeze(-1).float()
        text_mean = (text * m).sum(1) / m.sum(1).clamp(min=1)  # (B, Dt)
        if drop_text is not None:
            text_mean = torch.where(drop_text[:, None], torch.zeros_like(text_mean), text_mean)
        visible = tokens.masked_fill(mask.unsqueeze(-1), 0.0).mean(1)  # (B, d)
        feat = self.mix(torch.cat([visible, text_mean], -1))[:, None].expand(B, N, 3)
        pos = torch.arange(N, dtype=tokens.dtype).expand(B, N)
        row = torch.arange(B, dtype=tokens.dtype)[:, None].expand(B, N)
        flag = (drop_text.to(tokens.dtype)[:, None].expand(B, N) if drop_text is not None
                else torch.zeros(B, N))
        return torch.cat([pos[..., None], row[..., None], flag[..., None], feat], -1)


class FakeHead(nn.Module):
    """Records (row, position), z_uncond and cfg_scale per call; draws from the generator."""

    token_dim = D_TOK

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def sample(self, z, temperature, generator, z_uncond=None, cfg_scale=1.0):
        self.calls.append({"rows": z[:, 1].long().tolist(), "pos": z[:, 0].long().tolist(),
                           "z_uncond": z_uncond, "cfg": cfg_scale})
        zz = z if z_uncond is None else z_uncond + cfg_scale * (z - z_uncond)
        noise = torch.randn(z.shape[0], D_TOK, generator=generator)
        out = zz[:, 3:3 + D_TOK] + 1.0 + temperature * noise
        out[:, 0] = zz[:, 0]  # channel 0 = the position it was drawn for
        return out


def _text(B: int = 2, L: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(B, L, D_TEXT, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1:, L - 2:] = False
    return text, mask


def _call(backbone, head, text, text_mask, N, seed=0, uncond_text=None, known=None,
          known_mask=None, progress=None, **settings):
    """`decode` with its settings and pairs spelled as keywords."""
    negative = None if uncond_text is None else (
        uncond_text, torch.ones(uncond_text.shape[:2], dtype=torch.bool))
    return decode(backbone, head, text, text_mask, N, DecodeSettings(**settings),
                  generator=torch.Generator().manual_seed(seed), negative=negative,
                  known=None if known is None else (known, known_mask), progress=progress)


def _decode(seed: int = 0, **kw):
    backbone, head = FakeBackbone(), FakeHead()
    text, text_mask = _text(kw.pop("B", 2))
    kw.setdefault("iterations", 5)
    out = _call(backbone, head, text, text_mask, kw.pop("N", 12), seed, **kw)
    return out, backbone, head


# ------------------------------------------------------------------ schedules
def test_cfg_scale_schedule_endpoints():
    for sched in ("linear", "cosine"):
        assert cfg_scale_at(0, 8, 4.0, sched, 100, 100) == pytest.approx(1.0)
        assert cfg_scale_at(7, 8, 4.0, sched, 100, 0) == pytest.approx(4.0)
    assert cfg_scale_at(3, 8, 4.0, "linear", 100, 75) == pytest.approx(1.75)
    assert cfg_scale_at(3, 8, 4.0, "cosine", 100, 50) == pytest.approx(2.5)
    assert cfg_scale_at(0, 8, 4.0, "cosine", 100, 90) < cfg_scale_at(0, 8, 4.0, "linear", 100, 90)
    assert cfg_scale_at(0, 8, 4.0, "constant", 100, 100) == 4.0
    with pytest.raises(UserError, match="sample.cfg_schedule"):
        cfg_scale_at(0, 8, 4.0, "square", 100, 50)


def test_masked_after_counts():
    K, N = 6, 40
    now = [N, N - 5]
    seen = []
    for step in range(K):
        nxt = masked_after(step, K, [N, N - 5], now)
        assert all(0 <= b < a for a, b in zip(now, nxt))  # strictly fewer while any remain
        seen.append(nxt)
        now = nxt
    assert seen[-1] == [0, 0]
    assert seen[0][0] == cosine_num_masked(0, K, N)


# ------------------------------------------------------------------ decode invariants
@pytest.mark.parametrize("iterations,N", [(5, 12), (1, 7), (20, 6)])
def test_each_token_revealed_exactly_once_and_never_remasked(iterations, N):
    out, backbone, head = _decode(iterations=iterations, N=N)
    assert out.shape == (2, N, D_TOK)
    sampled = torch.zeros(2, N, dtype=torch.long)
    for call in head.calls:
        for r, p in zip(call["rows"], call["pos"]):
            sampled[r, p] += 1
    assert (sampled == 1).all()
    masks = [c["mask"] for c in backbone.calls]
    assert masks[0].all()  # everything starts masked
    for before, after in zip(masks, masks[1:]):
        assert not (after & ~before).any()  # never re-masked
    # at each step the head draws exactly the tokens that stop being masked
    for i, call in enumerate(head.calls):
        nxt = masks[i + 1] if i + 1 < len(masks) else torch.zeros_like(masks[0])
        drawn = torch.zeros_like(masks[0])
        drawn[call["rows"], call["pos"]] = True
        assert torch.equal(drawn, masks[i] & ~nxt)
    assert len(backbone.calls) == min(iterations, N)  # steps that reveal nothing are skipped
    assert torch.equal(out[..., 0], torch.arange(N, dtype=out.dtype).expand(2, N))
    assert (out[..., 1:] != 0).all()


def test_same_seed_same_tokens_different_seed_different():
    a, _, _ = _decode(seed=3, cfg=3.0)
    b, _, _ = _decode(seed=3, cfg=3.0)
    c, _, _ = _decode(seed=4, cfg=3.0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_cfg_one_skips_uncond_rows_and_equals_unguided():
    text_u = torch.randn(2, 3, D_TEXT)
    plain, backbone, head = _decode(cfg=1.0)
    with_neg, _, _ = _decode(cfg=1.0, uncond_text=text_u, cfg_schedule="constant")
    assert torch.equal(plain, with_neg)
    assert all(c["rows"] == 2 and c["drop"] is None for c in backbone.calls)
    assert all(c["z_uncond"] is None and c["cfg"] == 1.0 for c in head.calls)


def test_cfg_uses_null_text_rows_and_schedule():
    out, backbone, head = _decode(cfg=4.0, cfg_schedule="linear", iterations=4)
    for c in backbone.calls:
        assert c["rows"] == 4 and c["drop"].tolist() == [False, False, True, True]
    for c in head.calls:
        assert c["z_uncond"] is not None
        assert (c["z_uncond"][:, 2] == 1).all()  # unconditional z came from drop_text rows
    scales = [c["cfg"] for c in head.calls]
    assert scales == sorted(scales) and scales[-1] == pytest.approx(4.0) and scales[0] > 1.0
    guided_const, _, head_c = _decode(cfg=4.0, cfg_schedule="constant", iterations=4)
    assert all(c["cfg"] == 4.0 for c in head_c.calls)
    assert not torch.allclose(out, guided_const)


def test_negative_prompt_rows_are_padded_to_a_common_length():
    text_u = torch.randn(1, 8, D_TEXT)  # one negative prompt, longer than the prompts
    out, backbone, head = _decode(cfg=2.0, uncond_text=text_u)
    assert all(c["rows"] == 4 and c["drop"] is None and c["text_len"] == 8
               for c in backbone.calls)
    assert out.shape == (2, 12, D_TOK)


def test_known_tokens_are_kept_and_never_sampled():
    B, N = 2, 12
    known = torch.randn(B, N, D_TOK)
    known_mask = torch.zeros(B, N, dtype=torch.bool)
    known_mask[0, :4] = True  # continuation: row 0 has a 4-token prefix
    known_mask[1, ::3] = True  # row 1: every third token given
    out, backbone, head = _decode(known=known, known_mask=known_mask, cfg=2.0, N=N, B=B)
    torch.testing.assert_close(out[known_mask], known[known_mask])
    drawn = torch.zeros(B, N, dtype=torch.long)
    for call in head.calls:
        for r, p in zip(call["rows"], call["pos"]):
            drawn[r, p] += 1
    assert (drawn[known_mask] == 0).all() and (drawn[~known_mask] == 1).all()
    for c in backbone.calls:  # known tokens are visible from the first step
        assert not (c["mask"][:B] & known_mask).any()
    assert backbone.calls[0]["mask"][:B].equal(~known_mask)


def test_all_known_returns_the_input_without_work():
    known = torch.randn(2, 6, D_TOK)
    out, backbone, head = _decode(known=known, known_mask=torch.ones(2, 6, dtype=torch.bool),
                                  N=6)
    assert torch.equal(out, known) and not backbone.calls and not head.calls


def test_progress_callback_and_argument_errors():
    ticks = []
    _decode(iterations=4, progress=lambda s, k: ticks.append((s, k)))
    assert ticks == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(UserError, match="sample.iterations"):
        _decode(iterations=0)
    with pytest.raises(UserError, match="sample.cfg_schedule"):
        _decode(cfg_schedule="exp")
    with pytest.raises(UserError, match="known"):
        _decode(known=torch.zeros(2, 12, D_TOK), known_mask=torch.ones(2, 11, dtype=torch.bool))


# ------------------------------------------------------------------ real modules
@pytest.mark.parametrize("kind", ["diffusion", "energy"])
def test_decode_with_real_backbone_and_heads(kind):
    from energytta.models.tta import TTAModel

    cfg = load_config("tiny", [f"head.kind={kind}"])
    torch.manual_seed(0)
    model = TTAModel(cfg, text_dim=D_TEXT).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised outputs would make every draw identical
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    N = model.tokens_for(1.0)
    text, text_mask = _text(B=2, L=5)
    known = torch.randn(2, N, model.token_dim)
    known_mask = torch.zeros(2, N, dtype=torch.bool)
    known_mask[:, : N // 4] = True

    def run(seed: int, **kw) -> torch.Tensor:
        return _call(model.backbone, model.head, text, text_mask, N, seed, iterations=3, **kw)

    a = run(0, cfg=3.0)
    assert a.shape == (2, N, model.token_dim) and torch.isfinite(a).all()
    assert torch.equal(a, run(0, cfg=3.0)) and not torch.allclose(a, run(1, cfg=3.0))
    torch.testing.assert_close(run(0, cfg=1.0), run(0, cfg=1.0, uncond_text=text[:1]))
    inpaint = run(0, cfg=2.0, known=known, known_mask=known_mask)
    torch.testing.assert_close(inpaint[known_mask], known[known_mask])
    assert math.isfinite(inpaint.abs().max().item())


def test_decode_settings_are_checked_once_by_the_config_rules():
    from energytta.config import load_config

    sample = load_config("tiny").sample
    how = DecodeSettings.of(sample, iterations=3)
    assert (how.iterations, how.cfg, how.cfg_schedule, how.temperature, how.one_pass) == (
        3, sample.cfg, sample.cfg_schedule, sample.temperature, sample.one_pass_cfg)
    with pytest.raises(UserError, match="sample.temperature"):
        DecodeSettings(iterations=2, temperature=float("nan"))
    with pytest.raises(UserError, match="sample.cfg"):
        DecodeSettings.of(sample, cfg=-1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        how.cfg = 2.0
