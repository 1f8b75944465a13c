"""Caption-only distillation (VSD with a LoRA fake-score teacher, temporal TV): the
gradient, what trains, the data path that never opens audio, runs, sampling, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import energytta.train.loop as loop
from energytta.audio.codec import build_codec
from energytta.checkpoint import load_model, save_inference
from energytta.cli import sample_main, train_main
from energytta.config import load_config
from energytta.models.tta import TTAModel
from energytta.train.logging import read_metrics
from energytta.train.objectives.captiononly import draw_tokens, temporal_tv

CAPTIONS = "a high beep\nrain falls\n\n# a comment\na dog barks twice\nsteady wind\n"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_text_dir) -> Path:
    """A tiny random v-predicting teacher (the one-step head reads v well at t = T-1)."""
    cfg = load_config("tiny", [f"text.model={tiny_text_dir}", "head.prediction=v"])
    torch.manual_seed(0)
    model = TTAModel(cfg, 32)
    for p in model.head.parameters():  # untrained heads output zeros: give them signal
        torch.nn.init.normal_(p, std=0.05)
    folder = tmp_path_factory.mktemp("vsd_teacher")
    return save_inference(folder / "teacher.safetensors", model, build_codec(cfg), cfg,
                          "teacher")


def _overrides(text_dir: Path, teacher: Path, captions: Path, out: Path, *extra: str):
    return [f"text.model={text_dir}", "head.prediction=v", "head.kind=onestep",
            "model.noise_inputs=true", "train.objective=captiononly", "data.kind=captions",
            f"data.train={captions}", f"teacher.ckpt={teacher}", f"train.out_dir={out}",
            "train.steps=3", "train.log_every=1", "train.sample_prompts=[]",
            "train.val_every=0", "sample.iterations=1", "sample.cfg=1", *extra]


@pytest.fixture
def captions(tmp_path) -> Path:
    path = tmp_path / "captions.txt"  # no audio anywhere near it
    path.write_text(CAPTIONS, encoding="utf-8")
    return path


def _objective(cfg):
    """The caption-only objective and its generator, as the loop builds them."""
    from energytta.data.dataset import build_dataset, collate
    from energytta.train.objectives import build_objective
    from energytta.train.objectives.base import TrainContext as Ctx

    ctx = Ctx(torch.device("cpu"), build_dataset(cfg, "train"), collate)
    return build_objective(cfg, ctx)


def _batch(objective, n: int = 2):
    return objective.inputs({"captions": ["a high beep", "rain falls"][:n]})


def test_vsd_gradient_is_zero_while_the_lora_teacher_equals_the_teacher(
        tiny_text_dir, teacher, captions, tmp_path):
    for scale, weighting in (("1.0", "swiftbrush"), ("3.0", "swiftbrush"), ("3.0", "dmd")):
        cfg = load_config("tiny", _overrides(tiny_text_dir, teacher, captions, tmp_path / "r",
                                             f"vsd.real_cfg={scale}", f"vsd.fake_cfg={scale}",
                                             f"vsd.weighting={weighting}"))
        obj = _objective(cfg)
        inputs = _batch(obj)
        g = torch.Generator().manual_seed(0)
        x = draw_tokens(obj.model, inputs["text"], inputs["text_mask"], obj.num_tokens, g)
        grad, mask = obj._vsd_gradient(x.detach(), inputs["text"], inputs["text_mask"], g)
        assert mask.any() and grad.shape == (int(mask.sum()), obj.model.token_dim)
        assert torch.count_nonzero(grad) == 0
    cfg = load_config("tiny", _overrides(tiny_text_dir, teacher, captions, tmp_path / "r"))
    obj = _objective(cfg)  # guidance on the real score only (the default): they differ
    inputs = _batch(obj)
    g = torch.Generator().manual_seed(0)
    x = draw_tokens(obj.model, inputs["text"], inputs["text_mask"], obj.num_tokens, g)
    grad, _ = obj._vsd_gradient(x.detach(), inputs["text"], inputs["text_mask"], g)
    assert torch.count_nonzero(grad) > 0


def test_the_generator_starts_as_the_teacher_and_gradients_reach_only_what_trains(
        tiny_text_dir, teacher, captions, tmp_path):
    cfg = load_config("tiny", _overrides(tiny_text_dir, teacher, captions, tmp_path / "r",
                                         "vsd.tv_weight=0.5"))
    obj = _objective(cfg)
    G, frozen, fake = obj.model, obj.teacher, obj.fake
    _, _, ref, _ = load_model(teacher)
    for name, value in ref.state_dict().items():  # G's weights are the teacher's ...
        assert torch.equal(G.state_dict()[name], value), name
    assert not G.backbone.noise_proj.weight.any()  # ... and the input noise starts unused
    inputs = _batch(obj)
    loss, logs = obj(G, **inputs, generator=torch.Generator().manual_seed(1))
    assert {"vsd", "tv", "fake", "grad", "loss"} <= logs.keys() and logs["tv"] > 0
    loss.backward()
    assert all(p.grad is None for p in frozen.parameters())  # the teacher never trains
    lora = [n for n, p in fake.named_parameters() if p.requires_grad]
    assert lora and all(".down." in n or ".up." in n for n in lora)  # only LoRA in the fake
    assert all(p.grad is None for n, p in fake.named_parameters() if n not in lora)
    assert any(p.grad is not None and p.grad.any() for n, p in fake.named_parameters()
               if ".up." in n)
    assert G.backbone.noise_proj.weight.grad.any()  # the student's step reaches G
    # the student's loss alone gives the LoRA teacher nothing: the fake score is detached
    for p in list(G.parameters()) + list(fake.parameters()):
        p.grad = None
    sg = draw_tokens(G, inputs["text"], inputs["text_mask"], obj.num_tokens,
                     torch.Generator().manual_seed(2))
    obj._fake_loss(sg.detach(), inputs["text"], inputs["text_mask"],
                   torch.Generator().manual_seed(3)).backward()
    assert all(p.grad is None for p in G.parameters())  # ... and the LoRA loss gives G nothing


def test_temporal_tv_matches_a_hand_computation(tiny_text_dir, teacher):
    cfg = load_config("tiny", [f"text.model={tiny_text_dir}"])
    model = TTAModel(cfg, 32)
    lat = torch.randn(2, model.latent_channels, 20, model.latent_freq)
    tokens = model.geometry.patchify(lat)
    d = lat[:, :, 1:] - lat[:, :, :-1]
    torch.testing.assert_close(temporal_tv(model, tokens, "l1"), d.abs().mean())
    torch.testing.assert_close(temporal_tv(model, tokens, "l2"), (d ** 2).mean())
    flat = model.geometry.patchify(torch.ones_like(lat))
    assert float(temporal_tv(model, flat, "l1")) == 0.0


def test_a_run_reads_no_audio_logs_its_terms_and_is_seeded(tiny_text_dir, teacher, tmp_path,
                                                           monkeypatch):
    import soundfile

    def no_audio(*args, **kwargs):
        raise AssertionError("caption-only training opened an audio file")
    monkeypatch.setattr(soundfile, "read", no_audio)
    monkeypatch.setattr(soundfile, "info", no_audio)
    monkeypatch.setattr(soundfile, "SoundFile", no_audio)
    manifest = tmp_path / "train.jsonl"  # a manifest whose audio does not exist
    manifest.write_text("".join(json.dumps({"audio": f"missing/{i}.wav", "caption": c}) + "\n"
                                for i, c in enumerate(["a beep", "rain", "a bell", "wind"])))
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        cfg = load_config("tiny", _overrides(tiny_text_dir, teacher, manifest, out))
        runs.append((out, loop.train(cfg)))
    (out_a, a), (_, b) = runs
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same weights
    rows = read_metrics(out_a / "metrics.jsonl", "train")
    assert len(rows) == 3 and all({"vsd", "tv", "fake", "grad"} <= r.keys() for r in rows)
    cfg, kind, _, _ = load_model(out_a / "model.safetensors")
    assert kind == "captiononly" and cfg.sample.iterations == 1


def test_the_checkpoint_samples_in_one_pass_through_the_cli(tiny_text_dir, teacher, captions,
                                                            corpus, tmp_path):
    out = tmp_path / "run"
    assert train_main(["--config", "tiny", *_overrides(tiny_text_dir, teacher, captions, out)]
                      ) == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("a high beep\n", encoding="utf-8")
    samples = tmp_path / "samples"
    args = ["--prompts", str(prompts), "--ckpt", str(out / "model.safetensors"),
            "--out-dir", str(samples), "--device", "cpu", "--no-spectrograms"]
    assert sample_main(args) == 0
    record = json.loads(next(samples.glob("*.json")).read_text())
    assert record["kind"] == "captiononly" and record["iterations"] == 1
    first = next(samples.glob("*.wav")).read_bytes()
    assert sample_main(args + ["--overwrite"]) == 0  # seeded: the same audio again
    assert next(samples.glob("*.wav")).read_bytes() == first
    # the diagnostics read clips even though the run read only captions
    from energytta.eval.diagnostics import diagnose

    row = diagnose(str(out / "model.safetensors"), str(corpus / "test.jsonl"), batches=1,
                   batch_size=2, generate=2, iterations=1)
    assert 0.0 <= row["gen_active"] <= 1.0 and row["real_events"] >= 0.0


@pytest.mark.parametrize("problem", ["empty", "latin1", "blank", "no-teacher", "student",
                                     "rank", "no-noise", "audio-data"])
def test_bad_input_is_one_line(problem, tiny_text_dir, teacher, tiny_ckpts, tmp_path, capsys):
    captions = tmp_path / "c.txt"
    captions.write_text("a beep\n", encoding="utf-8")
    extra: list[str] = []
    if problem == "empty":
        captions.write_text("", encoding="utf-8")
    elif problem == "latin1":
        captions.write_bytes("caf\xe9 sounds\n".encode("latin-1"))
    elif problem == "blank":
        captions.write_text("\n   \n# only a comment\n", encoding="utf-8")
    elif problem == "no-teacher":
        teacher = tmp_path / "nope.safetensors"
    elif problem == "student":
        teacher = tiny_ckpts["student"]
    elif problem == "rank":
        extra = ["vsd.lora_rank=999"]
    elif problem == "no-noise":
        extra = ["model.noise_inputs=false"]
    elif problem == "audio-data":
        extra = ["data.kind=audio"]
    args = _overrides(tiny_text_dir, teacher, captions, tmp_path / "run") + extra
    assert train_main(["--config", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_study_page_reads_its_numbers_off_the_rows(tmp_path):
    from research import captiononly as study

    def row(acc, typ, fd, cpu):
        checks = {"overall": {"accuracy": acc, "n": 10}, "type": {"accuracy": typ, "n": 10},
                  "clips_all_correct": {"accuracy": 0.1, "n": 10}}
        return {"metrics": {"synth-classifier": {"fd": fd}, "mel-stats": {"fd": 1.0}},
                "attributes": {"all": checks, "seen": checks, "heldout": checks},
                "generation": {"wall_s_per_clip": cpu, "cpu_s_per_clip": cpu}}
    args = study.build_parser().parse_args(["--runs", str(tmp_path), "--steps", "90"])
    assert study.arm_overrides(args, "main")[1] == "train.steps=90"
    assert study.arm_overrides(args, "step0")[-2:] == ["train.lr=1e-12", "train.warmup_steps=0"]
    rows = {"teacher": row(0.45, 0.5, 200.0, 4.0), "student": row(0.36, 0.4, 230.0, 1.0),
            "step0": row(0.20, 0.2, 400.0, 0.2), "main": row(0.30, 0.3, 300.0, 0.2),
            "tv-l1": row(0.32, 0.3, 290.0, 0.2)}
    arms = ["step0", "main", "tv-l1"]
    curves = {a: [{"step": 30, "val/gen_type": 0.25, "val/gen_attributes": 0.3,
                   "val/gen_count": 0.2}] for a in arms}
    text = study.render(args, arms, rows, curves, {a: "–" for a in arms},
                        {"command": "python -m research.captiononly", "date": "d", "machine": "m"})
    assert "| `tv-l1` | + TV, L1, λ_TV = 0.03 | 0.320 | +0.020 | 0.300 | +0.000 |" in text
    assert "starts (`step0`) at attribute accuracy 0.200" in text
    assert "`tv-l1`, reaches 0.320 (+0.120) after 90 steps" in text
    assert "hurts at every weight" not in text  # tv-l1 is above main here
    assert "standard error of about 12.6 points" in text  # 10 checks at p = 0.2
    assert "0.320 vs the paired-data student's 0.360 and the teacher's 0.450" in text
    assert "| `main` | 30 | 0.250 | 0.300 | 0.200 |" in text


def test_the_energy_head_student_trains_by_the_same_objective(tiny_text_dir, teacher, captions,
                                                              tmp_path):
    # a paired-data student (energy head) as the starting point, one pass, same VSD loss
    cfg = load_config("tiny", [f"text.model={tiny_text_dir}", "head.kind=energy"])
    torch.manual_seed(0)
    student = save_inference(tmp_path / "student.safetensors", TTAModel(cfg, 32),
                             build_codec(cfg), cfg, "student")
    args = [a for a in _overrides(tiny_text_dir, teacher, captions, tmp_path / "run",
                                  "head.kind=energy", f"vsd.init={student}")
            if a != "head.prediction=v"]  # the diffusion head's key: an energy head has none
    model = loop.train(load_config("tiny", args))
    _, _, start, _ = load_model(student)
    moved = [k for k, v in start.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert moved  # it trained ...
    cfg_out, kind, _, _ = load_model(tmp_path / "run" / "model.safetensors")
    assert kind == "captiononly" and cfg_out.head.kind == "energy"  # ... and records its route


def test_a_jsonl_of_captions_alone_trains_with_the_recipes_validation_default(
        tiny_text_dir, teacher, tmp_path, capsys):
    """`{"caption": ...}` rows need no "audio"; a validation manifest that is not there
    (the recipe's default path) turns validation off with a warning instead of failing."""
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"caption": c}) + "\n"
                                for c in ["a beep", "rain", "a bell", "wind"]))
    out = tmp_path / "run"
    args = _overrides(tiny_text_dir, teacher, captions, out, "train.val_every=2",
                      f"data.val={tmp_path / 'no_val.jsonl'}")
    assert train_main(["--config", "tiny", *args]) == 0
    assert "validation off" in capsys.readouterr().out
    assert len(read_metrics(out / "metrics.jsonl", "train")) == 3
    assert read_metrics(out / "metrics.jsonl", "val") == []
    assert (out / "model.safetensors").is_file()
    captions.write_text('{"caption": "a beep"}\n{"caption": ""}\n')
    args = _overrides(tiny_text_dir, teacher, captions, tmp_path / "run2")
    assert train_main(["--config", "tiny", *args]) == 2
    assert 'captions.jsonl:2: missing or empty "caption"' in capsys.readouterr().err
