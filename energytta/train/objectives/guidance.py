"""Single-pass guidance distillation: one conditional backbone pass at scale w gives what
the two-pass classifier-free guidance gave (docs/guidance.md).

MAR-family students guide in *feature* space: the energy head reads
z_g = z_u + w·(z_c − z_u) (EAR's `ScoreLoss.sample`), which costs a second, unconditional
backbone row per generated clip. Stage one of Meng et al. 2023 ("On distillation of guided
diffusion models") distils that combination into one w-conditioned network; here the
combination is a feature vector, exactly linear in w, so the network is the student's
backbone with a `GuidanceHead` on its output, z + (w − 1)·Δ(z), and the target is exact
(no sampling):

    tokens, text ~ the training data;  mask ~ MAR's training mask (truncnorm ratio)
    w ~ U[1, guide.max_scale] per row (w = 1 for guide.unguided_frac of them)
    z_c, z_u = reference(tokens, mask, text), reference(tokens, mask, null text)   no grad
    loss = ‖student(tokens, mask, text, w)[mask] − (z_u + w·(z_c − z_u))[mask]‖²

The reference is the frozen student named by `guide.init`; the student starts as a copy of
it, with the guidance head's last layer at zero (so step 0 is the reference). The backbone
and the guidance head train; the energy head is frozen, so it keeps reading the feature
space it was trained on. Caption-dropout
rows (model.text_dropout) learn the null-text features at w = 1, so the distilled checkpoint
still guides with two passes (`sample.one_pass_cfg=false`) and takes negative prompts.
Loss on the masked positions only: those are the features the head samples from.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from energytta.checkpoint import load_codec_state, load_model, load_weights
from energytta.config import Config
from energytta.errors import UserError
from energytta.masking import training_mask
from energytta.train.objectives.base import TrainContext, ValContext
from energytta.train.objectives.student import check_compatible
from energytta.train.objectives.tokens import TokenObjective, TokenParts


def reference_path(cfg: Config) -> Path:
    """`guide.init` as a path; a bare "student" names the shipped student."""
    from energytta.checkpoint import MODEL_KINDS, resolve_checkpoint

    name = cfg.guide.init.strip()
    if not name:
        raise UserError("guide.init is empty: set guide.init=PATH (a trained student) or "
                        "'student' (the shipped one)")
    path = resolve_checkpoint(name) if name in MODEL_KINDS else Path(name)
    if not path.exists():
        raise UserError(f"guide.init={name} does not exist: set guide.init=PATH to a trained "
                        "student checkpoint (or 'student', the shipped one)")
    return path


def init_from_reference(model: nn.Module, reference: nn.Module, source: str) -> None:
    """Copy the reference's weights into the new student; only the guidance head (zero at
    its output) may be missing from the reference."""
    try:
        missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    except RuntimeError as e:  # a shape differs
        missing, unexpected = [], [str(e).splitlines()[-1].strip()]
    bad = unexpected or [k for k in missing if not k.startswith("backbone.guidance_proj")]
    if bad:
        raise UserError(f"guide.init={source} does not fit this student ({bad[0]}); copy "
                        "its model.* and head.* keys (base: its config) and keep "
                        "model.guidance_embed=true")


def guided_target(reference: nn.Module, tokens: Tensor, mask: Tensor, text: Tensor,
                  text_mask: Tensor, drop: Tensor, w: Tensor) -> Tensor:
    """The reference's two-pass guided features z_u + w·(z_c − z_u) (B,N,D), no grad.

    Rows with `drop` set read the null text in both passes (so their target is z_u)."""
    B = tokens.shape[0]
    with torch.no_grad():
        both = torch.cat([drop, torch.ones_like(drop)])
        z = reference(tokens.repeat(2, 1, 1), mask.repeat(2, 1), text.repeat(2, 1, 1),
                      text_mask.repeat(2, 1), drop_text=both)  # (2B, N, D)
        z_c, z_u = z[:B], z[B:]
        return z_u + w[:, None, None].to(z.dtype) * (z_c - z_u)


def draw_scales(B: int, cfg: Config, generator: torch.Generator, drop: Tensor) -> Tensor:
    """w (B,): U[1, max_scale], 1 for `unguided_frac` of the rows and every dropped row."""
    g = cfg.guide
    dev = generator.device
    w = 1 + (g.max_scale - 1) * torch.rand(B, generator=generator, device=dev)
    plain = torch.rand(B, generator=generator, device=dev) < g.unguided_frac
    w = torch.where(plain | drop.to(dev), torch.ones_like(w), w)
    return w.to(drop.device)


class GuidanceObjective(nn.Module, TokenObjective):
    """Distil a student's two-pass feature guidance into one w-conditioned pass.

    No submodules of its own: the frozen reference is held outside the module tree (never
    saved, never trained).

    Args:
        cfg: the run's config (`guide.*`, `model.guidance_embed=true`, head.kind=energy).
        reference: the frozen student TTAModel (eval mode).
    """

    def __init__(self, cfg: Config, reference: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        object.__setattr__(self, "reference", reference)  # not a submodule

    @classmethod
    def build(cls, cfg: Config, ctx: TrainContext) -> "GuidanceObjective":
        if not cfg.model.guidance_embed or cfg.head.kind != "energy":
            raise UserError("train.objective=guidance distils an energy-head student into a "
                            "one-pass guided one: set head.kind=energy and "
                            "model.guidance_embed=true (base: energytta/configs/guidance.yaml)")
        parts = TokenParts.build(cfg, ctx.device)
        source = reference_path(cfg)
        ref_cfg, _, reference, _ = load_model(source, ctx.device)
        if ref_cfg.model.guidance_embed:
            raise UserError(f"guide.init={cfg.guide.init} is already guidance-distilled; "
                            "start from the plain student it came from")
        reference.requires_grad_(False)
        check_compatible(cfg, ref_cfg, parts.model, reference)
        init_from_reference(parts.model, reference, cfg.guide.init)
        parts.model.head.requires_grad_(False)  # before EMA and optimizer: z keeps its meaning
        objective = cls(cfg, reference)
        objective.parts = parts
        return objective

    def fit(self, ctx: TrainContext) -> None:
        """The reference's codec statistics: the student must read latents as it did. A
        latent cache made with other statistics is refused (its latents are fixed)."""
        path = reference_path(self.cfg)
        state = load_codec_state(path)
        cached = getattr(ctx.dataset, "codec_state", None)
        if cached is not None and any(
                k not in cached or not torch.equal(cached[k].cpu(), v.cpu())
                for k, v in state.items()):
            raise UserError(f"data.train={self.cfg.data.train} was cached with other codec "
                            f"statistics than guide.init={self.cfg.guide.init}; train from "
                            "the manifest (data.train=....jsonl) or re-cache with its codec")
        load_weights(self.codec, state, path, "codec")

    def forward(self, model: nn.Module, latents: Tensor, text: Tensor, text_mask: Tensor,
                generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """One step's loss -> (loss, {"guide", "guided_only", "loss"}).

        Args:
            model: the student TTAModel being trained.
            latents: (B, C, T, F) codec latents; text: (B, L, Dt); text_mask: (B, L) bool.
            generator: every draw (mask, caption dropout, scales).
        """
        reference = self.reference
        if reference.training:  # a parent's .train() must not turn its dropout on
            reference.eval()
        tokens = model.geometry.patchify(latents)  # (B, N, d)
        B, N, _ = tokens.shape
        mask = training_mask(B, N, model.cfg.model, generator, tokens.device)  # (B, N)
        drop = torch.rand(B, generator=generator, device=generator.device)
        drop = (drop < model.cfg.model.text_dropout).to(tokens.device)
        w = draw_scales(B, self.cfg, generator, drop)  # (B,)
        target = guided_target(reference, tokens, mask, text, text_mask, drop, w)
        z = model(tokens, mask, text, text_mask, drop_text=drop, guidance=w)  # (B, N, D)
        err = (z - target.to(z.dtype)).pow(2)[mask].mean(-1)  # (M,) per masked token
        loss = err.mean()
        rows = (w > 1)[:, None].expand(B, N)[mask]  # (M,) tokens of guided rows
        guided_only = err[rows].mean() if bool(rows.any()) else err.new_zeros(())
        logs = {"guide": loss, "guided_only": guided_only, "loss": loss}
        return loss, {k: float(v.detach()) for k, v in logs.items()}

    def validate(self, model: nn.Module, ctx: ValContext) -> dict[str, float]:
        """Held-out loss and time diagnostics (as every token objective), plus
        `guide_residual`: the one-pass error left at w = sample.cfg (guide.max_scale when
        that is 1), as a fraction of the
        error of not guiding at all (‖z(w) − z_g‖² / ‖z_c − z_g‖² on masked tokens; 1 at
        step 0, 0 when the second pass is fully distilled)."""
        out = super().validate(model, ctx)
        scale = self.cfg.sample.cfg if self.cfg.sample.cfg > 1 else self.cfg.guide.max_scale
        out["guide_residual"] = guide_residual(model, self.reference, ctx, scale)
        return out

    def extra_repr(self) -> str:
        g = self.cfg.guide
        return f"init={g.init}, max_scale={g.max_scale}, unguided_frac={g.unguided_frac}"


@torch.no_grad()
def guide_residual(model: nn.Module, reference: nn.Module, ctx: ValContext, scale: float
                   ) -> float:
    """Σ‖z(w) − z_g‖² / Σ‖z_c − z_g‖² over the masked tokens of the validation batches, at
    w = `scale` for every row, one seeded MAR mask per batch (see `validate`)."""
    from energytta.train.objectives.base import model_inputs

    left = base = 0.0
    for batch in ctx.batches:
        inputs = model_inputs(batch)
        tokens = model.geometry.patchify(inputs["latents"])  # (B, N, d)
        B, N, _ = tokens.shape
        mask = training_mask(B, N, model.cfg.model, ctx.generator, tokens.device)
        keep = torch.zeros(B, dtype=torch.bool, device=tokens.device)
        w = torch.full((B,), float(scale), device=tokens.device)
        text, text_mask = inputs["text"], inputs["text_mask"]
        target = guided_target(reference, tokens, mask, text, text_mask, keep, w)[mask]
        plain = reference(tokens, mask, text, text_mask)[mask]
        one = model(tokens, mask, text, text_mask, guidance=w)[mask]
        left += float((one - target).pow(2).sum())
        base += float((plain - target).pow(2).sum())
    return left / base if base > 0 else 0.0
