"""Caption-only distillation (SwiftAudio / SwiftBrush on a MAR teacher): a one-pass student
trained from captions alone by variational score distillation (VSD), with a LoRA
fake-score teacher and a temporal total-variation regulariser. No audio is read.

One training step, for a batch of captions (docs/captiononly.md has every choice):

    x = G(noise, text)                          # (B,N,d) tokens in ONE backbone pass
    mask ~ MAR's training mask (truncnorm ratio); t ~ U[t_min, t_max]; ε ~ N(0, I)
    x_t = √ᾱ·x + √(1−ᾱ)·ε  on the masked tokens
    ε_real = teacher(visible = sg(x), x_t, t), guided at vsd.real_cfg
    ε_fake = LoRA teacher(visible = sg(x), x_t, t), guided at vsd.fake_cfg
    ∇ = w(t)·(ε_real − ε_fake) on the masked tokens         (SwiftBrush eq. 6, w = 1 − ᾱ)
    L_G = ½‖x − sg(x − ∇)‖² + λ_TV·TV(x)                      (SwiftBrush's surrogate)
    L_fake = denoising loss of the LoRA teacher on sg(x), 10 % caption dropout
    loss = L_G + L_fake

How the MAR teacher scores a sample: a diffusion-head MAR models p(masked tokens | visible
tokens, text), so the score is taken on a random masked subset of the student's tokens
with the rest (detached) as the context, exactly the conditionals it was trained on.

The two losses touch disjoint parameters (the fake score is computed without grad, the
LoRA loss reads a detached x), so one backward and one optimizer step do SwiftBrush's
student step and LoRA step on the same batch (the LoRA step sees the samples from before
the student's update, as in SwiftBrush's alternating loop).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energytta.checkpoint import load_codec_state, load_weights
from energytta.config import Config
from energytta.errors import UserError
from energytta.masking import training_mask
from energytta.plugins import load_plugin
from energytta.train.objectives.base import TrainContext, ValContext
from energytta.train.objectives.student import (TEACHER_GROUP, check_compatible,
                                                init_student_from_teacher, load_frozen_teacher,
                                                teacher_path)
from energytta.train.objectives.tokens import TokenObjective, TokenParts
from energytta.train.seeds import PARTS_SEED, derive_seed

KIND = "captiononly"


# ------------------------------------------------------------------ the generator
def draw_tokens(model: nn.Module, text: Tensor, text_mask: Tensor, num_tokens: int,
                generator: torch.Generator) -> Tensor:
    """The one-pass generator G, differentiable: (B,L,Dt) text -> (B,N,d) tokens.

    Every token is masked (no audio context); input noise enters the decoder through the
    backbone's `noise_proj` (`model.noise_inputs`), head noise through the head: the
    one-step diffusion head's x_T, or the energy head's ε.
    """
    B, d, dev = text.shape[0], model.token_dim, text.device
    tokens = torch.zeros(B, num_tokens, d, device=dev, dtype=text.dtype)
    mask = torch.ones(B, num_tokens, dtype=torch.bool, device=dev)
    noise = None
    if getattr(model.backbone, "noise_proj", None) is not None:
        noise = torch.randn(tokens.shape, generator=generator, device=dev, dtype=text.dtype)
    z = model(tokens, mask, text, text_mask, noise=noise).reshape(B * num_tokens, -1)
    head = model.head
    if hasattr(head, "generate"):  # teachers.onestep.OneStepHead
        x_T = torch.randn((z.shape[0], d), generator=generator, device=dev, dtype=z.dtype)
        out = head.generate(z, x_T)
    elif hasattr(head, "draw_noise"):  # the energy head: a differentiable forward
        out = head(z, head.draw_noise(z.shape[0], z, generator))
    else:
        raise UserError(f"head.kind={model.cfg.head.kind} cannot generate in one pass; use "
                        "head.kind=onestep (the teacher's head, once) or energy")
    return out.view(B, num_tokens, d)


def temporal_tv(model: nn.Module, tokens: Tensor, norm: str) -> Tensor:
    """Mean |Δ| (l1) or Δ² (l2) of the latent (B,C,T,F) between neighbouring frames."""
    lat = model.geometry.unpatchify(tokens)
    diff = lat[:, :, 1:] - lat[:, :, :-1]
    return diff.abs().mean() if norm == "l1" else diff.pow(2).mean()


# ------------------------------------------------------------------ the teachers' scores
def guided_eps(teacher: nn.Module, context: Tensor, mask: Tensor, text: Tensor,
               text_mask: Tensor, x_t: Tensor, t: Tensor, scale: float) -> Tensor:
    """A diffusion-head MAR's ε̂ (M,d) for the masked tokens' x_t (M,d) at t (M,), given the
    visible tokens of `context` (B,N,d) and the text; classifier-free guided at `scale`
    (on the head's output, which is linear in ε, v and x_0 alike)."""
    B = context.shape[0]
    guided = scale != 1.0
    rows = 2 if guided else 1
    drop = (torch.arange(rows * B, device=text.device) >= B) if guided else None
    z = teacher(context.repeat(rows, 1, 1), mask.repeat(rows, 1), text.repeat(rows, 1, 1),
                text_mask.repeat(rows, 1), drop_text=drop)  # (rows·B, N, D)
    head, d = teacher.head, x_t.shape[-1]
    zc = z[:B][mask]  # (M, D)
    if guided:
        zs = torch.cat([zc, z[B:][mask]])
        out_c, out_u = head.net(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                head.net.cond_embed(zs))[:, :d].chunk(2)
        out = out_u + scale * (out_c - out_u)
    else:
        out = head.net(x_t, t, head.net.cond_embed(zc))[:, :d]
    diff = head.train_diffusion
    return diff.eps_from_x0(diff.x0_from_output(out, x_t, t), x_t, t)


# ------------------------------------------------------------------ objective
class CaptionOnlyObjective(nn.Module, TokenObjective):
    """VSD from a frozen diffusion-head teacher, from captions alone.

    Submodules: the LoRA fake-score teacher (`fake`; its LoRA weights train, its base is
    a frozen copy of the teacher). The frozen teacher itself is held outside the module
    tree (never saved, never trained).

    Args:
        cfg: the run's config (`vsd.*`, `teacher.ckpt`, `model.*`).
        model: the generator G (a TTAModel), already initialised.
        teacher: the frozen teacher TTAModel; teacher_cfg: its config.
    """

    # the generator never drops captions, so its learned null text gets no gradient
    unused_parameters = True

    def __init__(self, cfg: Config, model: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        v = cfg.vsd
        T = teacher.head.train_diffusion.num_timesteps
        if not 0 < v.t_min < v.t_max < T:
            raise UserError(f"vsd.t_min={v.t_min} / vsd.t_max={v.t_max} must satisfy "
                            f"0 < t_min < t_max < the teacher's {T} timesteps")
        self.cfg, self.num_tokens = cfg, model.tokens_for(cfg.audio.crop_seconds)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: frozen, not saved
        make_lora = load_plugin(TEACHER_GROUP, "lora_teacher")
        if make_lora is None:
            raise UserError(f"no LoRA teacher is installed (entry point '{TEACHER_GROUP}: "
                            "lora_teacher'); reinstall energytta: pip install -e .")
        # the LoRA's random init from (train.seed, PARTS_SEED) alone: the global RNG here
        # depends on what the process ran before (a first teacher load, lazy imports)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.train.seed, PARTS_SEED))
            self.fake = make_lora(teacher, v.lora_rank, v.lora_alpha)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return KIND

    @property
    def extra_lr_mult(self) -> float:
        """The LoRA teacher's lr relative to train.lr (`energytta.train.optim`)."""
        return float(self.cfg.vsd.lora_lr_mult)

    @classmethod
    def build(cls, cfg: Config, ctx: TrainContext) -> "CaptionOnlyObjective":
        from energytta.data.captions import CaptionDataset

        if not isinstance(ctx.dataset, CaptionDataset):
            raise UserError("train.objective=captiononly trains from captions alone: set "
                            "data.kind=captions (data.train: a caption .txt or a manifest)")
        if not cfg.model.noise_inputs:
            raise UserError("train.objective=captiononly needs model.noise_inputs=true (a "
                            "one-pass generator's tokens are coordinated through its input "
                            "noise)")
        parts = TokenParts.build(cfg, ctx.device)
        teacher_cfg, teacher = load_frozen_teacher(cfg, ctx.device)
        check_compatible(cfg, teacher_cfg, parts.model, teacher)
        init_generator(cfg, parts.model, teacher)  # before EMA, optimizer and resume
        objective = cls(cfg, parts.model, teacher)
        objective.parts = parts
        return objective

    def inputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Captions -> text (B,L,Dt), text_mask (B,L); nothing else is read."""
        text, mask = self.text(batch["captions"])
        return {"text": text, "text_mask": mask}

    def fit(self, ctx: TrainContext) -> None:
        """The teacher's codec statistics (G writes tokens in the teacher's latent space)."""
        ckpt = teacher_path(self.cfg)
        load_weights(self.codec, load_codec_state(ckpt), ckpt, "codec")

    def forward(self, model: nn.Module, text: Tensor, text_mask: Tensor,
                generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """One step's loss -> (loss, {"vsd", "tv", "fake", "grad", "loss"}); "grad" is the
        mean |∇| of the VSD gradient (how hard the teachers disagree)."""
        v, teacher, fake = self.cfg.vsd, self.teacher, self.fake
        for frozen in (teacher, fake):  # dropout off in both; the loop's .train() reaches fake
            frozen.eval()
        x = draw_tokens(model, text, text_mask, self.num_tokens, generator)  # (B,N,d)
        sg = x.detach()
        grad, mask = self._vsd_gradient(sg, text, text_mask, generator)  # (M,d), (B,N)
        loss_g = 0.5 * F.mse_loss(x[mask], (sg[mask] - grad).detach())
        tv = temporal_tv(model, x, v.tv_norm) if v.tv_weight > 0 else x.new_zeros(())
        loss_fake = self._fake_loss(sg, text, text_mask, generator)
        loss = loss_g + v.tv_weight * tv + loss_fake
        logs = {"vsd": loss_g, "tv": tv, "fake": loss_fake, "grad": grad.abs().mean(),
                "loss": loss}
        return loss, {k: float(val.detach()) for k, val in logs.items()}

    def _vsd_gradient(self, sg: Tensor, text: Tensor, text_mask: Tensor,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The VSD gradient on a MAR mask of the (detached) sample -> (M,d), mask (B,N)."""
        v, diff = self.cfg.vsd, self.teacher.head.train_diffusion
        B, N, d = sg.shape
        mask = training_mask(B, N, self.cfg.model, generator, sg.device)
        x0 = sg[mask]  # (M, d)
        t = torch.randint(v.t_min, v.t_max + 1, (x0.shape[0],), generator=generator,
                          device=sg.device)
        eps = torch.randn(x0.shape, generator=generator, device=sg.device, dtype=x0.dtype)
        x_t = diff.q_sample(x0, t, eps)
        with torch.no_grad():
            real = guided_eps(self.teacher, sg, mask, text, text_mask, x_t, t, v.real_cfg)
            fake = guided_eps(self.fake, sg, mask, text, text_mask, x_t, t, v.fake_cfg)
        ab = diff.alpha_bar(t, x0)  # (M, 1)
        if v.weighting == "dmd":
            # DMD (Yin et al. 2024, eq. 8): in x_0 space, normalised by the real x̂_0's error
            x0_real, x0_fake = (diff.predict_x0(x_t, t, e) for e in (real, fake))
            scale = (x0 - x0_real).abs().mean().clamp_min(1e-6)
            return (x0_fake - x0_real) / scale, mask
        return (1 - ab) * (real - fake), mask  # SwiftBrush: w(t) = 1 − ᾱ_t

    def _fake_loss(self, sg: Tensor, text: Tensor, text_mask: Tensor,
                   generator: torch.Generator) -> Tensor:
        """The LoRA teacher's MAR denoising loss on the student's detached samples."""
        B, N, _ = sg.shape
        mask = training_mask(B, N, self.cfg.model, generator, sg.device)
        drop = torch.rand(B, generator=generator, device=generator.device)
        drop = (drop < self.cfg.vsd.fake_text_dropout).to(sg.device)
        z = self.fake(sg, mask, text, text_mask, drop_text=drop)
        return self.fake.head.loss(z, sg, mask, generator=generator)

    def validate(self, model: nn.Module, ctx: ValContext) -> dict[str, float]:
        """The generation check (type / attributes / count of clips generated from the
        validation captions, at `sample.*` and `train.val_iterations`): captions and
        attributes only, no audio. Empty without attributes (a plain caption file)."""
        from energytta.eval.diagnostics import generation_check

        n = self.cfg.train.val_generate
        items = [it for it in (ctx.items or []) if it.attributes][:n]
        if n <= 0 or not items:
            return {}
        return generation_check(self.cfg, model, ctx.codec, ctx.text, items,
                                self.cfg.train.val_iterations, seed=self.cfg.train.seed)


def init_generator(cfg: Config, model: nn.Module, teacher: nn.Module) -> None:
    """G starts as the teacher (backbone; and head, for head.kind=onestep) or, with
    `vsd.init`, as another checkpoint (a paired-data student, a caption-only one); the
    input-noise projection starts at zero either way, so G(noise) = that model at step 0."""
    from energytta.checkpoint import load_model

    if cfg.vsd.init:
        _, _, src, _ = load_model(cfg.vsd.init)
        state = {k: v for k, v in src.state_dict().items() if not k.startswith(
            "backbone.noise_proj")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("backbone.noise_proj") for k in missing):
            raise UserError(f"vsd.init={cfg.vsd.init} does not fit this generator "
                            f"({(unexpected or missing)[0]}); match its model and head")
        return
    copied, skipped = init_student_from_teacher(model, teacher)
    if any(not k.startswith("noise_proj") for k in skipped):
        raise UserError(f"the generator's backbone must have the teacher's shapes to start "
                        f"as it ({skipped[0]} differs); copy the teacher's model.* keys")
    if cfg.head.kind != "onestep":
        raise UserError(f"head.kind={cfg.head.kind} has no teacher weights to start from: "
                        "use head.kind=onestep, or vsd.init=a student checkpoint")
    model.head.load_state_dict(teacher.head.state_dict())
