"""The student objective: energy score + λ · feature distillation from a frozen teacher.

IMPACT-style contextual representation distillation: the student's MAR backbone is pulled
toward the features of a frozen diffusion-head MAR teacher run on the *same* tokens, mask
and text, while the student's energy head learns the data with the energy score (EAR).

`StudentObjective.build` does what the loop needs, in order:

    parts = TokenParts.build(cfg, device)         # text cache, codec, student TTAModel
    prepare_student(cfg, parts.model, device)     # init from teacher / freeze, BEFORE EMA,
                                                  # optimizer and any resume load
    objective = StudentObjective(cfg, parts.model, device)
    loss, logs = objective(model, latents, text, text_mask, generator)

`objective.parameters()` is empty unless the student's width differs from the teacher's;
then it holds the learned student→teacher projections, which join the optimizer.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energytta.checkpoint import load_codec_state, load_weights
from energytta.config import Config
from energytta.errors import UserError
from energytta.masking import training_mask
from energytta.plugins import load_plugin
from energytta.train.objectives.base import TrainContext
from energytta.train.objectives.tokens import TokenObjective, TokenParts


# ------------------------------------------------------------------ teacher
TEACHER_GROUP = "energytta.teachers"  # entry point `load_teacher` (energytta/plugins.py)


@functools.lru_cache(maxsize=1)
def _load_teacher_cached(path: str, mtime_ns: int, device: str) -> tuple[Config, nn.Module]:
    # through the entry point: energytta never imports teachers (DESIGN: dependency
    # direction), and sampling a student never loads diffusion code
    load_teacher = load_plugin(TEACHER_GROUP, "load_teacher")
    if load_teacher is None:
        raise UserError(f"no teacher loader is installed (entry point '{TEACHER_GROUP}: "
                        "load_teacher'); reinstall energytta: pip install -e .")
    return load_teacher(path, device)


def load_frozen_teacher(cfg: Config, device: torch.device | str) -> tuple[Config, nn.Module]:
    """The teacher named by `cfg.teacher.ckpt`, frozen, in eval mode (cached: loaded once
    for `prepare_student` and `StudentObjective`).

    Args:
        cfg: the student's config.
        device: where the teacher runs.
    """
    path = teacher_path(cfg)
    return _load_teacher_cached(str(path.resolve()), path.stat().st_mtime_ns, str(device))


def teacher_path(cfg: Config) -> Path:
    """`teacher.ckpt` as a path; "teacher" names the shipped one (energytta/assets/)."""
    from energytta.checkpoint import resolve_checkpoint

    ckpt = cfg.teacher.ckpt.strip()
    if not ckpt:
        raise UserError("teacher.ckpt is empty but distillation needs a teacher: set "
                        "teacher.ckpt=PATH (a trained teacher) or distill.weight=0")
    path = resolve_checkpoint(ckpt) if ckpt == "teacher" else Path(ckpt)
    if not path.exists():
        raise UserError(f"teacher.ckpt={ckpt} does not exist: set teacher.ckpt=PATH to a "
                        "trained teacher checkpoint (or 'teacher', the shipped one) or "
                        "distill.weight=0")
    return path


def check_compatible(cfg: Config, teacher_cfg: Config, model: nn.Module,
                     teacher: nn.Module) -> None:
    """Raise UserError unless teacher and student read the same tokens and text.

    Args:
        cfg, teacher_cfg: student and teacher configs.
        model, teacher: the two TTAModels.
    """
    pairs = {
        "codec.name": (cfg.codec.name, teacher_cfg.codec.name),
        "audio.sample_rate": (cfg.audio.sample_rate, teacher_cfg.audio.sample_rate),
        "audio.hop_length": (cfg.audio.hop_length, teacher_cfg.audio.hop_length),
        "audio.n_mels": (cfg.audio.n_mels, teacher_cfg.audio.n_mels),
        "model.patch_t": (cfg.model.patch_t, teacher_cfg.model.patch_t),
        "model.patch_f": (cfg.model.patch_f, teacher_cfg.model.patch_f),
        # the student starts from the teacher's backbone: its positions must be the same kind
        "model.pos_embed": (cfg.model.pos_embed, teacher_cfg.model.pos_embed),
        "text.model": (cfg.text.model, teacher_cfg.text.model),
        "text_dim": (model.text_dim, teacher.text_dim),
    }
    for key, (mine, theirs) in pairs.items():
        if mine != theirs:
            raise UserError(f"teacher.ckpt was trained with {key}={theirs!r} but the student "
                            f"uses {mine!r}; set {key}={theirs!r} so both read the same input")
    if teacher.max_tokens < model.max_tokens:
        raise UserError(f"the teacher covers {teacher_cfg.audio.max_seconds} s but the student "
                        f"audio.max_seconds={cfg.audio.max_seconds}; lower audio.max_seconds")


# ------------------------------------------------------------------ student set-up
def init_student_from_teacher(student: nn.Module, teacher: nn.Module
                              ) -> tuple[list[str], list[str]]:
    """Copy the teacher's backbone weights into the student wherever names and shapes match.

    Args:
        student, teacher: TTAModels (only `.backbone` is touched; heads differ by design).
    Returns:
        (copied, skipped) parameter/buffer names of the student backbone.
    """
    theirs = teacher.backbone.state_dict()
    copied, skipped = [], []
    with torch.no_grad():
        for name, value in student.backbone.state_dict().items():
            src = theirs.get(name)
            if src is not None and src.shape == value.shape:
                value.copy_(src.to(value.device, value.dtype))
                copied.append(name)
            else:
                skipped.append(name)
    return copied, skipped


def prepare_student(cfg: Config, model: nn.Module, device: torch.device | str) -> None:
    """Apply `cfg.distill.init_from_teacher` and `cfg.distill.freeze_backbone` to a new student.

    Call it right after building the TTAModel and BEFORE creating the EMA copy and the
    optimizer (so both start from the initialised weights and the optimizer skips frozen
    ones) and before loading a resume checkpoint (which then overrides the init). Without
    a teacher (`teacher.ckpt` empty and `distill.weight == 0`) the init is skipped with a
    warning.

    Args:
        cfg: the student config (`head.kind == "energy"`).
        model: the freshly built student TTAModel.
        device: where the teacher is loaded.
    """
    d = cfg.distill
    if d.init_from_teacher:
        if cfg.teacher.ckpt.strip() or d.weight > 0:
            teacher_cfg, teacher = load_frozen_teacher(cfg, device)
            check_compatible(cfg, teacher_cfg, model, teacher)
            copied, skipped = init_student_from_teacher(model, teacher)
            if not copied:
                warnings.warn("distill.init_from_teacher: no backbone weight matched the "
                              "teacher's shapes; the student starts from scratch")
            elif skipped:
                warnings.warn(f"distill.init_from_teacher: {len(skipped)} backbone tensors "
                              f"differ in shape and keep their random init ({skipped[0]}, ...)")
        else:
            warnings.warn("distill.init_from_teacher is set but teacher.ckpt is empty: "
                          "the student backbone starts from scratch")
    if d.freeze_backbone:
        model.backbone.requires_grad_(False)


# ------------------------------------------------------------------ objective
def _distill_term(student: Tensor, teacher: Tensor, kind: str) -> Tensor:
    """Mean over tokens of MSE (per element) or 1 − cos (per token). Args (B, N, D)."""
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-6)).mean()


class StudentObjective(nn.Module, TokenObjective):
    """Energy score + `distill.weight` × feature distillation, one training step's loss.

    Registered submodules are only the student→teacher projections (present when widths
    differ); the teacher (and `parts`, which `build` sets) are held outside the module
    tree, so they never appear in `parameters()` or `state_dict()` and never train here.

    Args:
        cfg: the student config.
        model: the student TTAModel (read for its width and decoder depth).
        device: where the teacher runs.
    """

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device | str) -> None:
        super().__init__()
        d = cfg.distill
        self.cfg, self.weight, self.loss_kind = cfg, float(d.weight), d.loss
        self.teacher_cfg: Config | None = None
        object.__setattr__(self, "teacher", None)  # not a submodule: frozen, not saved
        self.layers: list[int] = []
        self.proj = nn.ModuleList()
        if self.weight > 0:
            self.teacher_cfg, teacher = load_frozen_teacher(cfg, device)
            check_compatible(cfg, self.teacher_cfg, model, teacher)
            object.__setattr__(self, "teacher", teacher)
            self.layers = self._check_layers(list(d.layers), model, teacher)
            self._build_projections(model, teacher, device)

    @classmethod
    def build(cls, cfg: Config, ctx: TrainContext) -> "StudentObjective":
        parts = TokenParts.build(cfg, ctx.device)
        prepare_student(cfg, parts.model, ctx.device)  # before EMA, optimizer and resume
        objective = cls(cfg, parts.model, ctx.device)
        objective.parts = parts
        return objective

    def fit(self, ctx: TrainContext) -> None:
        """With a teacher, its codec statistics (unless the latents are cached): the student
        must see latents normalised exactly as its teacher's were, since the distillation
        targets and the initial backbone weights assume that latent space."""
        if self.cfg.teacher.ckpt and not hasattr(ctx.dataset, "codec_state"):
            ckpt = teacher_path(self.cfg)
            load_weights(self.codec, load_codec_state(ckpt), ckpt, "codec")
        else:
            super().fit(ctx)

    @staticmethod
    def _check_layers(layers: list[int], model: nn.Module, teacher: nn.Module) -> list[int]:
        depth = min(model.cfg.model.decoder_depth, teacher.cfg.model.decoder_depth)
        for i, layer in enumerate(layers):
            if not -depth <= layer < depth:
                raise UserError(f"distill.layers[{i}]={layer} is out of range: student and "
                                f"teacher share {depth} decoder layers (0..{depth - 1})")
        return [layer % depth for layer in layers]

    def _build_projections(self, model: nn.Module, teacher: nn.Module,
                           device: torch.device | str) -> None:
        """A learned Linear per aligned feature when the widths differ (FitNets-style)."""
        ds, dt = model.backbone.out_dim, teacher.backbone.out_dim
        if ds != dt:
            self.proj = nn.ModuleList(nn.Linear(ds, dt) for _ in range(1 + len(self.layers)))
            self.proj.to(device)

    def _align(self, feats: list[Tensor], targets: list[Tensor]) -> Tensor:
        """Sum of the distillation terms over the aligned features (final z first)."""
        total = feats[0].new_zeros(())
        for k, (s, t) in enumerate(zip(feats, targets)):
            if len(self.proj):
                s = self.proj[k](s)
            total = total + _distill_term(s, t.to(s.dtype), self.loss_kind)
        return total

    def forward(self, model: nn.Module, latents: Tensor, text: Tensor, text_mask: Tensor,
                generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """One step's loss.

        Args:
            model: the raw student TTAModel (the loop's LossModule runs this objective
                inside the DDP-wrapped forward, so gradients still synchronise).
            latents: (B, C, T, F) codec latents.
            text: (B, L, Dt) text states; text_mask: (B, L) bool.
            generator: every random draw (mask, caption dropout, head noise).
        Returns:
            (loss, {"energy", "distill", "loss"}) — distill is the unweighted term.
        """
        mcfg = model.cfg.model
        tokens = model.geometry.patchify(latents)  # (B, N, d)
        B, N, _ = tokens.shape
        # ONE mask and ONE caption dropout, shared by student and teacher: the features
        # are only comparable when both networks saw exactly the same context.
        mask = training_mask(B, N, mcfg, generator, tokens.device)
        drop = torch.rand(B, generator=generator, device=generator.device) < mcfg.text_dropout
        drop = drop.to(tokens.device)
        z, hidden = model(tokens, mask, text, text_mask, drop, return_hidden=True)
        energy = model.head.loss(z, tokens, mask, generator=generator)
        distill = energy.new_zeros(())
        if self.weight > 0:
            distill = self._distill(z, hidden, tokens, mask, text, text_mask, drop)
        loss = energy + self.weight * distill
        logs = {"energy": energy.detach(), "distill": distill.detach(), "loss": loss.detach()}
        return loss, {k: float(v) for k, v in logs.items()}

    def _distill(self, z: Tensor, hidden: list[Tensor], tokens: Tensor, mask: Tensor,
                 text: Tensor, text_mask: Tensor, drop: Tensor) -> Tensor:
        """Distillation over ALL token positions, masked and visible.

        Why all: the decoder's features at visible positions are the context every masked
        position attends to in the next block, so they are part of the contextual
        representation being transferred; with MAR's mask ratio in [0.7, 1] they add at
        most ~30 % more supervised positions at no extra forward cost.
        """
        teacher = self.teacher
        if teacher.training:  # a caller's .train() on a parent module must not reach it
            teacher.eval()
        with torch.no_grad():
            zt, hidden_t = teacher(tokens, mask, text, text_mask, drop, return_hidden=True)
        feats = [z] + [hidden[i] for i in self.layers]
        targets = [zt] + [hidden_t[i] for i in self.layers]
        return self._align(feats, targets)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, loss={self.loss_kind}, layers={self.layers}"
