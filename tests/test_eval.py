"""Evaluation: metrics on known distributions, embedder architectures loading state dicts
in the official key layouts, and energytta-eval end to end on tiny inputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from energytta.cli import eval_main
from energytta.eval import metrics


# ------------------------------------------------------------------------- metrics
def test_frechet_distance_of_sampled_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
    var1, var2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 2.0])
    a = mu1 + np.sqrt(var1) * rng.standard_normal((200_000, 3))
    b = mu2 + np.sqrt(var2) * rng.standard_normal((200_000, 3))
    # Diagonal covariances: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(v1) - sqrt(v2))^2.
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert metrics.frechet_distance_features(a, b) == pytest.approx(closed, abs=0.02)
    assert metrics.frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_full_covariance_and_singular_fallback():
    s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    s2 = np.eye(2)
    # With S2 = I: Tr(S1) + 2 - 2 Tr(S1^1/2); S1^1/2 from the eigen-decomposition.
    w, v = np.linalg.eigh(s1)
    expected = 1.0 + np.trace(s1) + 2 - 2 * np.trace(v @ np.diag(np.sqrt(w)) @ v.T)
    assert metrics.frechet_distance([1, 0], s1, [0, 0], s2) == pytest.approx(expected)
    few = np.random.default_rng(1).standard_normal((4, 16))  # rank-deficient covariances
    assert np.isfinite(metrics.frechet_distance_features(few, few[::-1] + 0.1))


def test_kl_on_hand_made_distributions():
    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    q = np.array([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]])
    expected = np.mean([np.sum(pi * np.log(pi / (qi + metrics.EPS_KL))) for pi, qi in zip(p, q)])
    assert metrics.kl_divergence(np.log(p), np.log(q)) == pytest.approx(expected, rel=1e-6)
    assert metrics.kl_divergence(np.log(p), np.log(p)) == pytest.approx(0.0, abs=1e-5)
    # sigmoid: independent Bernoullis, summed over classes, averaged over rows
    lr, lg = np.array([[0.0, 2.0]]), np.array([[1.0, -1.0]])
    pr, pg = 1 / (1 + np.exp(-lr)), 1 / (1 + np.exp(-lg))
    bern = np.sum(pr * (np.log(pr) - np.log(pg + metrics.EPS_KL)))
    assert metrics.kl_divergence(lr, lg, "sigmoid") == pytest.approx(bern, rel=1e-5)
    with pytest.raises(ValueError):
        metrics.kl_divergence(np.zeros((2, 3)), np.zeros((3, 3)))


def test_inception_score_on_hand_made_distributions():
    # Certain predictions: each split scores exp(entropy of its class histogram).
    labels = np.arange(100) % 5
    mean, std = metrics.inception_score(np.eye(5)[labels] * 50.0)
    shuffled = labels[np.random.RandomState(metrics.IS_SEED).permutation(100)]
    per_split = []
    for chunk in shuffled.reshape(10, 10):
        q = np.bincount(chunk, minlength=5) / 10
        per_split.append(np.exp(-np.sum(q[q > 0] * np.log(q[q > 0]))))
    assert mean == pytest.approx(np.mean(per_split), rel=1e-4)
    assert std == pytest.approx(np.std(per_split), rel=1e-3, abs=1e-6)
    assert 1.0 < mean <= 5.0
    same = np.tile([[3.0, 1.0, 0.0]], (40, 1))  # every sample predicts the same p(y|x)
    assert metrics.inception_score(same)[0] == pytest.approx(1.0)
    # two equally likely confident classes per split: IS = 2 exactly
    halves = np.eye(2)[np.arange(20) % 2] * 60.0
    assert metrics.inception_score(halves, splits=1)[0] == pytest.approx(2.0, rel=1e-4)


def test_clap_score_and_kid():
    t = np.array([[1.0, 0.0], [0.0, 2.0]])
    a = np.array([[1.0, 1.0], [0.0, 3.0]])
    assert metrics.clap_score(t, a) == pytest.approx((np.sqrt(0.5) + 1.0) / 2)
    x = np.random.default_rng(0).standard_normal((200, 8))
    y = x + 3.0
    same, _ = metrics.kernel_inception_distance(x, x[::-1], subsets=5, subset_size=100)
    far, _ = metrics.kernel_inception_distance(x, y, subsets=5, subset_size=100)
    assert abs(same) < 0.001 * far  # unbiased: ~0 for one distribution, large when shifted


# ---------------------------------------------------------------------- embedders
def test_cnn14_loads_official_layout_and_matches_stft(tmp_path):
    from energytta.eval.embedders import get_embedder
    from energytta.eval.panns import Cnn14, periodic_hann

    torch.manual_seed(0)
    model = Cnn14()
    state = model.state_dict()
    for key in ("spectrogram_extractor.stft.conv_real.weight", "logmel_extractor.melW",
                "bn0.running_var", "conv_block6.bn2.weight", "fc1.weight", "fc_audioset.bias"):
        assert key in state
    assert state["fc_audioset.weight"].shape == (527, 2048)
    torch.save({"model": state, "iteration": 0}, tmp_path / "Cnn14_16k.pth")  # official form
    emb = get_embedder("panns-cnn14", panns_ckpt=tmp_path / "Cnn14_16k.pth")
    wav = torch.randn(16000) * 0.1
    out = emb.embed(wav)
    assert out.features.shape == (1, 2048) and out.logits.shape == (527,)
    # the conv-DFT front-end equals torch.stft's power spectrogram (centre, reflect, Hann)
    power = emb.model.spectrogram_extractor(wav[None])[0, 0]  # (T, 257)
    ref = torch.stft(wav, 512, 160, window=torch.from_numpy(periodic_hann(512)).float(),
                     center=True, pad_mode="reflect", return_complex=True).abs() ** 2
    torch.testing.assert_close(power, ref.T, rtol=1e-3, atol=1e-3)


def test_vggish_loads_torchvggish_layout(tmp_path):
    from energytta.eval.embedders import get_embedder
    from energytta.eval.vggish import VGGish, vggish_mel_matrix

    state = VGGish().state_dict()
    assert {"features.0.weight", "features.13.bias", "embeddings.4.weight"} <= set(state)
    state["pproc.pca_eigen_vectors"] = torch.zeros(128, 128)  # shipped with the official file
    torch.save(state, tmp_path / "vggish.pth")
    emb = get_embedder("vggish", vggish_ckpt=tmp_path / "vggish.pth")
    out = emb.embed(torch.randn(3 * 16000) * 0.1)
    assert out.features.shape == (3, 128) and emb.metric == "fad"  # 0.96 s examples
    w = vggish_mel_matrix()
    assert w.shape == (257, 64) and np.all(w[0] == 0) and np.all(w.max(axis=0) > 0.5)


def test_bad_checkpoint_is_a_user_error(tmp_path):
    from energytta.errors import UserError
    from energytta.eval.embedders import get_embedder

    torch.save({"model": {"fc1.weight": torch.zeros(2, 2)}}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="--panns-ckpt"):
        get_embedder("panns-cnn14", panns_ckpt=tmp_path / "bad.pth")
    with pytest.raises(UserError, match="--vggish-ckpt"):
        get_embedder("vggish")
    pickled = {"model": {}, "sampler": {"state": np.random.RandomState(0).get_state()}}
    torch.save(pickled, tmp_path / "train_state.pth")  # numpy objects: refused, not unpickled
    with pytest.raises(UserError, match="convert it once"):
        get_embedder("panns-cnn14", panns_ckpt=tmp_path / "train_state.pth")
    with pytest.raises(UserError, match="unknown embedder"):
        get_embedder("inception")


def test_clap_from_local_folder(tmp_path, tiny_text_dir):
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel
    from transformers import ClapTextConfig

    from energytta.eval.embedders import get_embedder

    text = ClapTextConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64, projection_dim=16,
                          max_position_embeddings=64)
    audio = ClapAudioConfig(spec_size=128, window_size=4, num_mel_bins=64, patch_size=4,
                            patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
                            hidden_size=32, projection_dim=16, enable_fusion=False)
    torch.manual_seed(0)
    ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                         projection_dim=16)).save_pretrained(tmp_path)
    ClapFeatureExtractor(feature_size=64, sampling_rate=48000, max_length_s=1,
                         nb_max_samples=48000).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tiny_text_dir / name, tmp_path / name)
    emb = get_embedder("clap", clap_model=tmp_path)
    assert emb.sample_rate == 48000
    a = emb.embed(torch.randn(48000) * 0.1).features
    t = emb.scorer.text_embeddings(["a bell rings", "rain"])
    assert a.shape == (1, 16) and t.shape == (2, 16)
    assert -1.0 <= metrics.clap_score(t[:1], a) <= 1.0


def test_synth_classifier_round_trip_and_shipped_checkpoint(tmp_path):
    from energytta.eval.classifier import (DEFAULT_CKPT, LABELS, ClassifierConfig,
                                           SynthClassifier, load_classifier, save_classifier,
                                           targets)
    from energytta.eval.embedders import get_embedder

    torch.manual_seed(0)
    model = SynthClassifier(ClassifierConfig(channels=[8, 8], features=16)).eval()
    save_classifier(model, tmp_path / "c.safetensors", {"val_accuracy": {"type": 0.5}})
    loaded, meta = load_classifier(tmp_path / "c.safetensors")
    wav = torch.randn(2, 16000) * 0.1
    torch.testing.assert_close(loaded(wav)["features"], model(wav)["features"])
    assert meta["val_accuracy"] == {"type": 0.5}
    emb = get_embedder("synth-classifier", classifier_ckpt=tmp_path / "c.safetensors")
    out = emb.embed(wav[0])
    assert out.features.shape == (1, 16) and out.logits.shape == (len(LABELS["type"]),)
    y = targets({"type": "beep", "count": 3, "pitch": "high"})
    assert y["count"] == 2 and y["pitch"] == 2 and y["envelope"] < 0 and y["loudness"] == 1
    # the shipped checkpoint: small, loadable, with its validation accuracy inside
    assert DEFAULT_CKPT.stat().st_size <= 2 * 1024 * 1024
    _, shipped = load_classifier()
    assert shipped["val_accuracy"]["type"] > 0.5


def test_mel_stats_features():
    from energytta.eval.embedders import get_embedder

    out = get_embedder("mel-stats").embed(torch.randn(32000) * 0.1)
    assert out.features.shape == (1, 128) and out.logits is None


# ------------------------------------------------------------------ energytta-eval
def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_tool_reference_against_itself(corpus, tmp_path):
    gen = tmp_path / "gen"
    shutil.copytree(corpus / "audio", gen)
    out = tmp_path / "eval.json"
    code = eval_main(["--generated", str(gen), "--reference", str(corpus / "test.jsonl"),
                      "--embedders", "mel-stats,synth-classifier", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["num_paired"] == 12
    assert abs(res["metrics"]["mel-stats"]["fd"]) < 1e-3
    sc = res["metrics"]["synth-classifier"]
    assert abs(sc["fd"]) < 1e-3 and abs(sc["kl_softmax"]) < 1e-4 and sc["is_mean"] >= 1.0
    assert res["attributes"]["all"]["overall"]["accuracy"] >= 0.9
    assert res["attributes"]["all"]["type"]["n"] == 12  # the classifier's type check


def test_tool_errors(corpus, tmp_path, capsys):
    ref = str(corpus / "test.jsonl")
    gen = _mkdir(tmp_path / "gen")
    shutil.copy(corpus / "audio" / "000000.wav", gen / "not-a-reference-id.wav")
    assert eval_main(["--generated", str(gen), "--reference", ref]) == 2
    assert "match no reference item" in capsys.readouterr().err
    assert eval_main(["--generated", str(tmp_path / "missing"), "--reference", ref]) == 2
    assert eval_main(["--generated", str(gen), "--reference", str(tmp_path / "x.jsonl")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_tool_generates_then_evaluates(corpus, tmp_path, tiny_text_dir):
    from energytta.audio.codec import build_codec
    from energytta.checkpoint import save_inference
    from energytta.config import load_config
    from energytta.models.tta import TTAModel

    cfg = load_config("tiny", ["head.kind=energy", f"text.model={tiny_text_dir}"])
    torch.manual_seed(0)
    ckpt = save_inference(tmp_path / "student.safetensors", TTAModel(cfg, 32),
                          build_codec(cfg), cfg, "student")
    out = tmp_path / "eval.json"
    gen = tmp_path / "gen"
    code = eval_main(["--ckpt", str(ckpt), "--iterations", "2", "--seed", "3", "--limit", "10",
                      "--generated", str(gen), "--reference", str(corpus / "test.jsonl"),
                      "--embedders", "mel-stats", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert sorted(p.stem for p in gen.glob("*.wav")) == [f"{i:06d}" for i in range(10)]
    assert res["generation"]["seed"] == 3 and res["generation"]["iterations"] == 2
    assert res["num_paired"] == 10 and np.isfinite(res["metrics"]["mel-stats"]["fd"])
