"""Single-pass guidance distillation: the w-embedding, the one-pass sampler, the target,
what trains, a run that learns, the CLI, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from energytta.audio.codec import build_codec
from energytta.checkpoint import load_model, save_inference
from energytta.cli import sample_main, train_main
from energytta.config import load_config
from energytta.models.tta import TTAModel
from energytta.sampling import DecodeSettings, cfg_scale_at, decode
from energytta.train.logging import read_metrics
from energytta.train.objectives.guidance import guided_target


def _model(text_dir: Path, *extra: str, seed: int = 0) -> TTAModel:
    cfg = load_config("tiny", [f"text.model={text_dir}", "head.kind=energy", *extra])
    torch.manual_seed(seed)
    return TTAModel(cfg, 32).eval()


def _inputs(model: TTAModel, B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    N, d = model.max_tokens // 2, model.token_dim
    tokens = torch.randn(B, N, d, generator=g)
    mask = torch.rand(B, N, generator=g) < 0.7
    text = torch.randn(B, 5, 32, generator=g)
    return tokens, mask, text, torch.ones(B, 5, dtype=torch.bool)


@pytest.mark.parametrize("head", ["mlp", "attention"])
def test_the_guidance_head_is_zero_at_init_and_exactly_zero_at_w_one(head, tiny_text_dir):
    model = _model(tiny_text_dir, "model.guidance_embed=true", f"model.guidance_head={head}")
    assert (model.backbone.guidance_proj.block is None) == (head == "mlp")
    tokens, mask, text, tmask = _inputs(model)
    plain = model(tokens, mask, text, tmask)
    assert torch.equal(model(tokens, mask, text, tmask, guidance=torch.tensor([3.0, 5.0])),
                       plain)  # zero-initialised output layer: the student starts as is
    for p in model.backbone.guidance_proj.parameters():
        torch.nn.init.normal_(p, std=0.5)
    assert torch.allclose(model(tokens, mask, text, tmask, guidance=torch.ones(2)), plain,
                          atol=1e-6)  # (w − 1)·MLP: w = 1 is always the plain network
    guided = model(tokens, mask, text, tmask, guidance=torch.tensor([3.0, 3.0]))
    assert (guided - plain).abs().max() > 1e-3


class _Recorder(torch.nn.Module):
    """A backbone that records the batch size and guidance of every call."""

    def __init__(self, backbone) -> None:
        super().__init__()
        self.inner, self.calls = backbone, []
        self.token_dim, self.guidance_proj = backbone.token_dim, backbone.guidance_proj

    def forward(self, tokens, *args, guidance=None, **kwargs):
        self.calls.append((tokens.shape[0], None if guidance is None else guidance.tolist()))
        return self.inner(tokens, *args, guidance=guidance, **kwargs)


def test_the_sampler_runs_one_conditional_pass_with_the_scheduled_scale(tiny_text_dir):
    model = _model(tiny_text_dir, "model.guidance_embed=true")
    for p in model.head.parameters():  # untrained heads output zeros: give them signal
        torch.nn.init.normal_(p, std=0.05)
    torch.nn.init.normal_(model.backbone.null_text, std=1.0)
    text, tmask = torch.randn(3, 5, 32), torch.ones(3, 5, dtype=torch.bool)
    N, K = 12, 4

    def run(**kw):
        rec = _Recorder(model.backbone)
        negative = kw.pop("uncond_text", None)
        negative = None if negative is None else (
            negative, torch.ones(negative.shape[:2], dtype=torch.bool))
        tokens = decode(rec, model.head, text, tmask, N,
                        DecodeSettings(iterations=K, cfg=4.0, **kw),
                        generator=torch.Generator().manual_seed(0), negative=negative)
        return rec.calls, tokens

    calls, one = run()
    assert [b for b, _ in calls] == [3] * K  # no unconditional rows
    masked = [N]
    for step in range(K):  # the scale each step passed is the linear schedule's
        from energytta.sampling import masked_after
        masked.append(masked_after(step, K, [N], [masked[-1]])[0])
        want = cfg_scale_at(step, K, 4.0, "linear", N, masked[-1])
        assert calls[step][1] == pytest.approx([want] * 3)
    calls, two = run(one_pass=False)
    assert [b for b, _ in calls] == [6] * K and all(w is None for _, w in calls)
    # at init the embedding is zero, so one pass is the unguided conditional model: the
    # two paths differ (the second pass is what the distillation has to learn)
    assert not torch.equal(one, two)
    calls, _ = run(uncond_text=torch.randn(1, 4, 32))  # a negative prompt needs two passes
    assert [b for b, _ in calls] == [6] * K


def test_the_target_is_the_references_two_pass_guided_features(tiny_text_dir):
    model = _model(tiny_text_dir)
    tokens, mask, text, tmask = _inputs(model)
    drop = torch.tensor([False, True])
    w = torch.tensor([3.0, 3.0])
    target = guided_target(model, tokens, mask, text, tmask, drop, w)
    z_c = model(tokens, mask, text, tmask, drop_text=torch.zeros(2, dtype=torch.bool))
    z_u = model(tokens, mask, text, tmask, drop_text=torch.ones(2, dtype=torch.bool))
    assert torch.allclose(target[0], z_u[0] + 3.0 * (z_c[0] - z_u[0]), atol=1e-5)
    assert torch.allclose(target[1], z_u[1], atol=1e-5)  # a dropped row's target is z_u


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_text_dir) -> Path:
    """A tiny random student whose conditional and unconditional features differ."""
    model = _model(tiny_text_dir)
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.nn.init.normal_(model.backbone.null_text, std=1.0)  # a clear guidance direction
    cfg = model.cfg
    folder = tmp_path_factory.mktemp("guide_ref")
    return save_inference(folder / "student.safetensors", model, build_codec(cfg), cfg,
                          "student")


def _overrides(text_dir: Path, ref: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [f"text.model={text_dir}", "head.kind=energy", "model.guidance_embed=true",
            "train.objective=guidance", f"guide.init={ref}", f"data.train={data}",
            f"data.val={data}", f"train.out_dir={out}", "train.steps=3", "train.log_every=1",
            "train.sample_prompts=[]", "train.val_every=0", "sample.cfg=3", *extra]


def _objective(cfg):
    from energytta.data.dataset import build_dataset, collate
    from energytta.train.objectives import build_objective
    from energytta.train.objectives.base import TrainContext as Ctx

    ctx = Ctx(torch.device("cpu"), build_dataset(cfg, "train"), collate)
    obj = build_objective(cfg, ctx)
    obj.fit(ctx)
    return obj, ctx


def test_only_the_backbone_trains_and_it_learns_the_guided_features(
        tiny_text_dir, reference, corpus, tmp_path):
    cfg = load_config("tiny", _overrides(tiny_text_dir, reference, corpus / "test.jsonl",
                                         tmp_path / "r", "guide.unguided_frac=0"))
    obj, ctx = _objective(cfg)
    model = obj.model
    assert not any(p.requires_grad for p in model.head.parameters())
    assert list(obj.parameters()) == []  # the reference is not a submodule: never saved
    batch = obj.inputs(ctx.collate([ctx.dataset[i] for i in range(4)]))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for step in range(60):
        loss, logs = obj(model, **batch, generator=torch.Generator().manual_seed(step % 4))
        assert logs["guide"] == pytest.approx(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert model.backbone.guidance_proj.out.weight.grad.abs().sum() > 0
            assert all(p.grad is None for p in model.head.parameters())
        opt.step()
        losses.append(logs["guided_only"])
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4]), losses


def test_a_run_exports_a_one_pass_student_that_the_cli_samples(
        tiny_text_dir, reference, corpus, tmp_path):
    out = tmp_path / "run"
    args = _overrides(tiny_text_dir, reference, corpus / "test.jsonl", out)
    assert train_main(["--config", "tiny", *args]) == 0
    rows = read_metrics(out / "metrics.jsonl", "train")
    assert len(rows) == 3 and all({"guide", "guided_only"} <= r.keys() for r in rows)
    cfg, kind, model, _ = load_model(out / "model.safetensors")
    assert kind == "student" and cfg.model.guidance_embed and cfg.sample.one_pass_cfg
    assert model.backbone.guidance_proj is not None
    prompts = tmp_path / "p.txt"
    prompts.write_text("a high beep\n", encoding="utf-8")
    for extra in ([], ["--two-pass-cfg"]):
        samples = tmp_path / f"samples{len(extra)}"
        assert sample_main(["--prompts", str(prompts), "--ckpt", str(out / "model.safetensors"),
                            "--out-dir", str(samples), "--device", "cpu",
                            "--no-spectrograms", *extra]) == 0
        record = json.loads(next(samples.glob("*.json")).read_text())
        assert record["kind"] == "student" and record["one_pass_cfg"] == (not extra)


@pytest.mark.parametrize("problem", ["no-embed", "teacher-head", "missing", "distilled",
                                     "shape", "scale", "head"])
def test_bad_input_is_one_line(problem, tiny_text_dir, reference, tiny_ckpts, corpus,
                               tmp_path, capsys):
    ref, extra = reference, []
    if problem == "no-embed":
        extra = ["model.guidance_embed=false"]
    elif problem == "teacher-head":
        extra = ["head.kind=diffusion"]
    elif problem == "missing":
        ref = tmp_path / "nope.safetensors"
    elif problem == "distilled":
        model = _model(tiny_text_dir, "model.guidance_embed=true")
        ref = save_inference(tmp_path / "d.safetensors", model, build_codec(model.cfg),
                             model.cfg, "student")
    elif problem == "shape":
        extra = ["model.width=48"]
    elif problem == "scale":
        extra = ["guide.max_scale=-1"]
    elif problem == "head":
        extra = ["model.guidance_head=conv"]
    args = _overrides(tiny_text_dir, ref, corpus / "test.jsonl", tmp_path / "run") + extra
    assert train_main(["--config", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_guiding_a_plain_backbone_in_one_pass_is_an_error(tiny_text_dir):
    from energytta.errors import UserError

    model = _model(tiny_text_dir)
    tokens, mask, text, tmask = _inputs(model)
    with pytest.raises(UserError, match="one_pass_cfg=false"):
        model(tokens, mask, text, tmask, guidance=torch.tensor([3.0, 3.0]))


def test_the_report_page_reads_the_arms_and_the_quality_rows(tmp_path, research_command,
                                                             capsys):
    import yaml

    run = tmp_path / "arm"
    run.mkdir()
    cfg = load_config("tiny", ["model.guidance_embed=true", "model.guidance_head=attention"])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 10, "loss": 1.0}, {"step": 200, "loss": 0.5, "time": 95.4},
        {"step": 200, "stage": "val", "val/guide_residual": 0.5, "val/gen_attributes": 0.3,
         "val/gen_type": 0.25}]))
    work = tmp_path / "work"
    work.mkdir()

    def row(acc, cpu):
        return {"metrics": {"synth-classifier": {"fd": 100.0}}, "generation": {
            "cpu_s_per_clip": cpu}, "attributes": {"all": {"overall": {"accuracy": acc},
                                                           "type": {"accuracy": 0.5}}}}
    (work / "student-k8.json").write_text(json.dumps(row(0.40, 1.0)))
    (work / "guided-k8.json").write_text(json.dumps(row(0.38, 0.5)))
    out = tmp_path / "g.md"
    tool = research_command("guidance")
    assert tool.main(["--runs", str(run), "--work", str(work), "--iterations", "8,4",
                      "--out", str(out)]) == 0
    text = out.read_text()
    assert f"| attention | `{run}` | 200 | 95 | 0.500 | 0.300 | 0.250 |" in text
    assert "| 8 | 0.400 | 0.380 |" in text and "2.0 points below" in text
    assert "2.00× faster" in text and "student K=4, guided K=4" in text
    assert tool.main(["--runs", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
