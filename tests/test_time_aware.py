"""Position-aware backbone, v-prediction / shifted schedules, and the diagnostics that tell
whether a model uses where its context is (energytta.eval.diagnostics)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from energytta.config import load_config
from energytta.errors import UserError
from energytta.eval import diagnostics
from energytta.masking import ratio_mask, training_mask
from energytta.models.blocks import Rotary, apply_rotary
from energytta.models.tta import TTAModel
from teachers.diffusion import create_diffusion, shifted_betas


# ------------------------------------------------------------------ rotary positions
def test_rotary_scores_depend_only_on_relative_position():
    rot = Rotary(8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 2, 8, generator=g), torch.randn(1, 1, 2, 8, generator=g)

    def score(p_q: float, p_k: float) -> float:
        cos, sin = rot(torch.tensor([[[p_q], [p_k]]]))
        rq, rk = apply_rotary(q, (cos, sin)), apply_rotary(k, (cos, sin))
        return float(rq[0, 0, 0] @ rk[0, 0, 1])

    assert score(3, 5) == pytest.approx(score(10, 12), abs=1e-5)
    assert score(3, 5) != pytest.approx(score(3, 9), abs=1e-3)
    cos, sin = rot(torch.zeros(1, 1, 1))  # position 0 (the text prefix) is the identity
    assert torch.equal(apply_rotary(q[:, :, :1], (cos, sin)), q[:, :, :1])


def test_rope_backbone_has_no_absolute_embeddings_and_a_clear_error_for_bad_values():
    cfg = load_config("tiny", ["model.pos_embed=rope"])
    names = set(TTAModel(cfg, 8).backbone.state_dict())
    assert "encoder_pos" not in names and "decoder_pos" not in names
    with pytest.raises(UserError, match="model.pos_embed"):
        TTAModel(load_config("tiny", ["model.pos_embed=sinusoid"]), 8)


def test_learned_positions_keep_old_checkpoints_loading(tiny_ckpts):
    from energytta.checkpoint import load_model

    cfg, _kind, model, _codec = load_model(tiny_ckpts["teacher"])
    assert cfg.model.pos_embed == "learned" and cfg.head.prediction == "eps"
    assert "encoder_pos" in model.backbone.state_dict()


# ------------------------------------------------------------------ noise schedules
def test_v_and_x0_targets_invert_to_x0():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(64, 4, generator=g), torch.randn(64, 4, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    for pred in ("eps", "v", "x0"):
        diff = create_diffusion(1000, prediction=pred)
        x_t = diff.q_sample(x0, t, noise)
        back = diff.x0_from_output(diff.target(x0, t, noise), x_t, t)
        assert torch.allclose(back[t < 990], x0[t < 990], atol=1e-3), pred


def test_schedule_shift_lowers_snr_everywhere_and_one_is_identity():
    base = create_diffusion(1000).betas
    assert shifted_betas(base, 1.0) is base
    ab, ab3 = np.cumprod(1 - base), np.cumprod(1 - shifted_betas(base, 3.0))
    snr, snr3 = ab / (1 - ab), ab3 / (1 - ab3)
    assert np.allclose(snr3[:900], snr[:900] / 9, rtol=1e-6)
    with pytest.raises(UserError, match="schedule_shift"):
        shifted_betas(base, 0.0)
    with pytest.raises(UserError, match="head.prediction"):
        create_diffusion(1000, prediction="score")


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_v_prediction_chain_from_t999_reproduces_gaussian_data(shift):
    """With the exact v for x_0 ~ N(μ, s²) the chain starts at T-1 (no sample_max_t)."""
    mu, s = 3.0, 0.5
    diff = create_diffusion(1000, "cosine", sampling_steps=50, prediction="v", shift=shift)
    ab_full = torch.from_numpy(create_diffusion(1000, shift=shift).alphas_cumprod)

    def exact_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = ab_full[t].unsqueeze(-1).to(x.dtype)
        x0 = mu + ab.sqrt() * s * s * (x - ab.sqrt() * mu) / (ab * s * s + 1 - ab)
        return (ab.sqrt() * x - x0) / (1 - ab).sqrt()

    g = torch.Generator().manual_seed(0)
    out = diff.p_sample_loop(exact_v, torch.randn(20000, 1, generator=g), 1.0, g)
    assert abs(out.mean().item() - mu) < 0.03
    assert abs(out.std().item() - s) < 0.06


def test_diffusion_head_loss_sees_masked_tokens_only():
    cfg = load_config("tiny", ["head.prediction=v"])
    model = TTAModel(cfg, 8)
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(2, 6, 32, generator=g), torch.randn(2, 6, model.token_dim, generator=g)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :2] = True
    loss = model.head.loss(z, x, mask, generator=torch.Generator().manual_seed(1))
    x2 = x.clone()
    x2[~mask] = 100.0  # visible tokens never reach the head
    assert model.head.loss(z, x2, mask, generator=torch.Generator().manual_seed(1)) == loss
    zero = model.head.loss(z, x, torch.zeros_like(mask))
    zero.backward()  # nothing masked: zero, and still a graph
    assert float(zero.detach()) == 0.0


# ------------------------------------------------------------------ diagnostics
def test_shuffle_visible_moves_only_the_context():
    g = torch.Generator().manual_seed(0)
    tok = torch.arange(20.0).view(1, 20, 1).repeat(2, 1, 3)
    mask = ratio_mask(2, 20, 0.5, g, torch.device("cpu"))
    moved = diagnostics.shuffle_visible(tok, mask, g)
    assert torch.equal(moved[mask], tok[mask])
    for b in range(2):
        assert sorted(moved[b, ~mask[b], 0].tolist()) == sorted(tok[b, ~mask[b], 0].tolist())
    assert not torch.equal(moved, tok)


def _toy_batch(N: int, d: int, g: torch.Generator, B: int = 16) -> torch.Tensor:
    """Clips whose every token is a point on a sinusoid with a random phase: a masked
    token is known from its neighbours only if the model knows where they are."""
    phase = torch.rand(B, 1, generator=g) * 2 * math.pi
    amp = torch.sin(2 * math.pi * 3 * torch.arange(N)[None] / N + phase)  # (B, N)
    return amp[..., None] * torch.ones(d) + 0.05 * torch.randn(B, N, d, generator=g)


def _train_toy(pos_embed: str, steps: int = 150) -> tuple[TTAModel, dict[str, float]]:
    torch.manual_seed(0)
    cfg = load_config("tiny", [f"model.pos_embed={pos_embed}", "head.prediction=v",
                               "model.patch_t=5", "model.patch_f=64"])
    model = TTAModel(cfg, 8)
    N, d = model.tokens_for(1.0), model.token_dim
    text, tmask = torch.zeros(16, 1, 8), torch.ones(16, 1, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        tok = _toy_batch(N, d, g)
        mask = training_mask(16, N, cfg.model, g, "cpu")
        loss = model.head.loss(model.backbone(tok, mask, text, tmask), tok, mask, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    held_out = _toy_batch(N, d, torch.Generator().manual_seed(9))
    return model, diagnostics.shuffle_gap(model, held_out, text, tmask, seed=3)


@pytest.mark.slow
def test_a_model_trained_where_position_matters_has_a_clearly_positive_gap():
    _, gap = _train_toy("rope")
    assert gap["shuffle_gap"] > 0.3 * gap["probe_true"] > 0
    # the gap is paired (same mask, noise and text): a bag-of-tokens model scores ~0
    _, bag = _train_toy("learned")
    assert abs(bag["shuffle_gap"]) < 0.1 * gap["shuffle_gap"]


def test_validate_tta_is_deterministic_and_reports_every_number(corpus, tiny_text_dir):
    from energytta.audio.codec import build_codec
    from energytta.data.manifest import read_manifest
    from energytta.text import TextEncoder

    cfg = load_config("tiny", [f"text.model={tiny_text_dir}", "model.pos_embed=rope",
                               "train.val_generate=3", "train.val_iterations=2",
                               "sample.duration=1.0"])
    torch.manual_seed(0)
    model, codec = TTAModel(cfg, 32).eval(), build_codec(cfg).eval()
    enc = TextEncoder(cfg.text.model, cfg.text.max_length).eval()
    items = read_manifest(corpus / "test.jsonl")
    text, tmask = enc([it.caption for it in items[:4]])
    lat = torch.randn(4, 1, 100, 64)
    ctx = SimpleNamespace(batches=[{"latents": lat, "text": text, "text_mask": tmask}],
                          items=items, codec=codec, text=lambda caps: enc(caps))
    first = diagnostics.validate_tta(cfg, model, ctx)
    assert first == diagnostics.validate_tta(cfg, model, ctx)
    for key in ("shuffle_gap", "probe_true", "pos_spread", "clip_spread", "gen_type",
                "gen_attributes"):
        assert math.isfinite(first[key]), key


@pytest.mark.slow
def test_diagnostics_command_reproduces_the_runs_last_validation_row(
        tiny_text_dir, corpus, tmp_path, capsys):
    from energytta.train import loop
    from energytta.train.logging import read_metrics

    manifest, run = str(corpus / "test.jsonl"), tmp_path / "run"
    cfg = load_config("tiny", [f"text.model={tiny_text_dir}", f"data.train={manifest}",
                               f"data.val={manifest}", f"train.out_dir={run}",
                               "model.pos_embed=rope", "head.prediction=v", "train.steps=4",
                               "train.val_every=4", "train.val_batches=2", "data.batch_size=3",
                               "train.val_generate=3", "train.val_iterations=2",
                               "train.sample_prompts=[]"])
    loop.train(cfg)
    (row,) = read_metrics(run / "metrics.jsonl", stage="val")
    out = tmp_path / "d.json"
    assert diagnostics.main(["--ckpt", str(run / "model.safetensors"), "--generate", "3",
                             "--iterations", "2", "--json", str(out)]) == 0
    numbers = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == numbers
    assert {"shuffle_gap", "pos_spread", "gen_type", "gen_attributes", "gen_active",
            "gen_events", "real_active", "real_events"} <= set(numbers)
    for key, value in numbers.items():  # the same batches, seeds and weights as the loop
        assert row[f"val/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    with pytest.raises(UserError, match="--batches"):
        diagnostics.main(["--ckpt", str(run / "model.safetensors"), "--batches", "0"])
    with pytest.raises(UserError, match="exceeds the 3 validation clips"):  # was capped
        diagnostics.main(["--ckpt", str(run / "model.safetensors"), "--batches", "1",
                          "--generate", "4"])


def test_recipe_ablation_page_from_cached_numbers(tmp_path):
    from research import ablation

    data = tmp_path / "val.jsonl"
    data.write_text("")
    args = ablation.build_parser().parse_args(
        ["--runs", str(tmp_path / "runs"), "--arms", "base,rope", "--data", str(data),
         "--out", str(tmp_path / "docs" / "reports" / "ab.md"), "--generate", "8",
         "--score-every", "10", "--figure", str(tmp_path / "docs" / "img" / "ab.png")])
    key = {"version": 2, "data": str(data), "batches": 4, "generate": 8, "iterations": 16,
           "cfg": 3.0}
    for arm, gap in (("base", 0.001), ("rope", 0.1)):
        for step in (10, 20):
            folder = tmp_path / "runs" / arm / f"step-{step:07d}"
            folder.mkdir(parents=True)
            (folder / "state.json").write_text("{}")
            numbers = {"shuffle_gap": gap * step, "gen_type": 0.5, "probe_true": 0.2}
            (folder / "diagnostics.json").write_text(json.dumps({"key": key,
                                                                 "numbers": numbers}))
        (tmp_path / "runs" / arm / "metrics.jsonl").write_text('{"step": 20, "time": 120}\n')
    page = ablation.run(args, "python -m research.ablation ...").read_text()
    assert "| rope | rotary positions" in page and "| 20 | 2 |" in page
    assert "2.0000" in page  # rope's gap at step 20
    assert (tmp_path / "docs" / "img" / "ab.png").is_file() and "](../img/ab.png)" in page
    assert ablation.finished(tmp_path / "runs" / "base", 20)
    assert not ablation.finished(tmp_path / "runs" / "base", 30)
    with pytest.raises(UserError, match="unknown arm"):
        ablation.run(ablation.build_parser().parse_args(["--arms", "nope"]), "")


def test_string_keys_take_yaml_boolean_words_verbatim():
    """`train.mixed_precision=no` (the documented value) is the string, not YAML's False."""
    cfg = load_config("tiny", ["train.mixed_precision=no", "model.grad_checkpointing=no"])
    assert cfg.train.mixed_precision == "no" and cfg.model.grad_checkpointing is False


def test_yaml_files_keep_boolean_words_for_string_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: tiny\ntrain:\n  mixed_precision: no\nmodel:\n  grad_checkpointing: on\n")
    cfg = load_config(str(path))
    assert cfg.train.mixed_precision == "no" and cfg.model.grad_checkpointing is True
    with pytest.raises(UserError, match="model.grad_checkpointing"):
        load_config("tiny", ["model.grad_checkpointing=maybe"])


def test_activity_counts_active_frames_and_events_at_an_absolute_level():
    """Three 0.2-s beeps at -6 dBFS in 2 s of silence: 30 % active (plus the 64-ms window's
    smear at each edge), three events; the same clip 40 dB quieter is silent (an absolute
    level, not relative to the clip's peak)."""
    from energytta.audio.mel import MelFrontend
    from energytta.config import AudioConfig
    from energytta.eval.activity import activity, reference_db

    audio, sr = AudioConfig(), 16000
    t = torch.arange(2 * sr) / sr
    gate = ((t % 0.6) < 0.2) & (t < 1.8)
    wav = 0.5 * torch.sin(2 * math.pi * 880.0 * t) * gate
    mel = MelFrontend(audio)(torch.stack([wav, 0.005 * wav]))
    active, events = activity(mel, reference_db(audio), sr / audio.hop_length)
    assert 0.3 <= float(active[0]) <= 0.37
    assert events.tolist() == [3.0, 0.0] and float(active[1]) == 0.0
