"""Training of the codec parts: the mel VAE (`codec.train=vae`) and the vocoder
(`codec.train=vocoder`), reached through `energytta-train --config codec_vae|vocoder`.

Objectives:
- VAE: L1 between normalised log-mel and reconstruction + `codec.vae_kl_weight` · KL
  (summed over latent elements, divided by mel elements: the per-pixel ratio of LDM's
  `LPIPSWithDiscriminator`), and, when their weights are > 0, a hinge adversarial term from a
  patch discriminator on mels and a discriminator feature-matching term (MelGAN, Kumar et
  al. 2019) standing in for LDM's image LPIPS, which has no mel counterpart.
- Vocoder: multi-resolution STFT distance + log-mel L1 (`energytta.audio.vocoder.vocoder_loss`).

Outputs in `train.out_dir`: `config.yaml`, `metrics.jsonl`, the part file
(`codec.safetensors` | `vocoder.safetensors`, written every `train.ckpt_every` steps and at
the end; point `codec.path` / `codec.vocoder_path` at it) and `train_state.safetensors`
(weights, optimizer, scheduler, RNG, data position) for `--resume`. Ctrl-C saves both.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from energytta.audio.mel import MelFrontend
from energytta.checkpoint import decode_tree, encode_tree, rng_state, set_rng_state
from energytta.config import Config
from energytta.errors import UserError
from energytta.train.logging import MetricsLog, Window, format_stats, make_progress
from energytta.train.loop import BatchStream, Position, StopRequest, derive_seed
from energytta.train.optim import WarmupSchedule
from energytta.utils import atomic_path, atomic_write_text, pick_device, seed_everything

PART_FILES = {"vae": "codec.safetensors", "vocoder": "vocoder.safetensors"}
STATE_FILE = "train_state.safetensors"
FIT_ITEMS = 64  # clips for the input / latent statistics


class MelDiscriminator(nn.Module):
    """Patch discriminator on normalised mel images (B, 1, T, F) (PatchGAN, Isola et al. 2017).

    Args:
        width: channels of the first conv (doubled once).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            nn.Conv2d(1, width, 4, 2, 1), nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.Conv2d(2 * width, 2 * width, 3, 1, 1)])
        self.out = nn.Conv2d(2 * width, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, 1, T, F) -> (patch logits (B, 1, T/4, F/4), intermediate features)."""
        feats = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            feats.append(x)
        return self.out(x), feats


def vae_loss(codec: nn.Module, mel: torch.Tensor, cfg: Config, generator: torch.Generator,
             disc: MelDiscriminator | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The VAE objective on a batch of log-mels.

    Args:
        codec: `VAECodec` (its `mel_image` normalisation and `vae`).
        mel: log-mel (B, n_mels, T); cfg: `codec.vae_*` weights.
        generator: draws the reparametrisation noise.
        disc: the discriminator when an adversarial / feature-matching weight is > 0.
    Returns:
        (loss, normalised mel image x, reconstruction x̂, logs) — x̂ for the discriminator.
    """
    from energytta.audio.vae import kl_divergence

    c = cfg.codec
    x = codec.mel_image(mel)  # (B, 1, T, M)
    rec, mean, logvar = codec.vae(x, generator)
    l1 = (rec - x).abs().mean()
    kl = kl_divergence(mean, logvar).mean() / x[0].numel()
    loss = l1 + c.vae_kl_weight * kl
    logs = {"l1": float(l1.detach()), "kl": float(kl.detach())}
    if disc is not None:
        logits, feats = disc(rec)
        with torch.no_grad():
            real_feats = disc(x)[1]
        adv = -logits.mean()  # hinge generator loss
        fm = sum((f - r).abs().mean() for f, r in zip(feats, real_feats)) / len(feats)
        loss = loss + c.vae_adv_weight * adv + c.vae_perceptual_weight * fm
        logs.update(adv=float(adv.detach()), fm=float(fm.detach()))
    return loss, x, rec, logs


def discriminator_loss(disc: MelDiscriminator, x: torch.Tensor, rec: torch.Tensor
                       ) -> torch.Tensor:
    """Hinge loss: relu(1 - D(x)) + relu(1 + D(x̂)) (Lim & Ye 2017; used by LDM/AudioLDM)."""
    return F.relu(1 - disc(x)[0]).mean() + F.relu(1 + disc(rec.detach())[0]).mean()


class CodecTrainer:
    """One training run of a codec part.

    Args:
        cfg: the full config; `codec.train` picks the part, `train.*` drives the loop,
            `data.train` gives the clips (`audio.crop_seconds` long).
        resume: continue from `train.out_dir/train_state.safetensors`.
    """

    def __init__(self, cfg: Config, resume: bool) -> None:
        from energytta.data.dataset import build_dataset, collate

        self.cfg, self.kind, t = cfg, cfg.codec.train, cfg.train
        if self.kind not in PART_FILES:
            raise UserError(f"codec.train must be 'vae' or 'vocoder', got '{self.kind}'")
        seed_everything(t.seed)
        self.device, self.console = pick_device(), Console()
        self.out = Path(t.out_dir)
        self.part_path, state_path = self.out / PART_FILES[self.kind], self.out / STATE_FILE
        if state_path.is_file() and not resume:
            raise UserError(f"{self.out} already holds a codec training run ({STATE_FILE}); "
                            "pass --resume to continue it or set train.out_dir=NEW_FOLDER")
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.dataset, self.collate = build_dataset(cfg, "train"), collate
        self.frontend = MelFrontend(cfg.audio).to(self.device)
        self.part, self.disc = self._build_part()
        self.opt, self.sched = self._optimizer(self.trainable())
        self.dopt = self._optimizer(self.disc.parameters())[0] if self.disc else None
        self.fit_mels = self._fit_mels()
        self.step, self.elapsed, pos = 0, 0.0, Position()
        if resume and state_path.is_file():
            pos = self._load(state_path)
        elif resume:
            self.console.print(f"[yellow]--resume: no {STATE_FILE} in {self.out}; starting fresh")
        if self.step == 0 and not self._from_file():  # a fine-tuned part keeps its statistics
            fit = self.part.fit_mel_stats if self.kind == "vae" else self.part.fit_stats
            fit(self.fit_mels)
        self.stream = BatchStream(self.dataset, collate, cfg.data.batch_size, t.seed, 0, 1,
                                  cfg.data.num_workers, pos)
        self.batches = iter(self.stream)
        self.metrics = MetricsLog(self.out / "metrics.jsonl", self.step)

    # -------------------------------------------------------------- set-up
    def _build_part(self) -> tuple[nn.Module, MelDiscriminator | None]:
        c = self.cfg.codec
        if self.kind == "vae":
            from energytta.audio.vae import VAECodec
            part = VAECodec(self.cfg)
            gan = c.vae_adv_weight > 0 or c.vae_perceptual_weight > 0
            disc = MelDiscriminator(c.vae_width).to(self.device) if gan else None
            return part.to(self.device), disc
        from energytta.audio.vocoder import load_part, trained_vocoder
        voc = trained_vocoder(self.cfg)
        if c.vocoder_path:  # fine-tune an existing vocoder
            load_part(c.vocoder_path, voc, self.cfg, "vocoder", "codec.vocoder_path")
        return voc.to(self.device), None

    def _from_file(self) -> bool:
        """Whether training starts from an existing part file (fine-tuning)."""
        return bool(self.cfg.codec.path if self.kind == "vae" else self.cfg.codec.vocoder_path)

    def trainable(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (the VAE, or the whole vocoder)."""
        return list((self.part.vae if self.kind == "vae" else self.part).parameters())

    def _optimizer(self, params: Any) -> tuple[torch.optim.AdamW, Any]:
        t = self.cfg.train
        opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        curve = WarmupSchedule(t.warmup_steps, t.steps, t.schedule, t.min_lr / t.lr if t.lr else 0)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, curve)

    @torch.no_grad()
    def _fit_mels(self) -> list[torch.Tensor]:
        """Log-mels of a fixed, seeded set of training clips [(16, n_mels, T), ...]."""
        g = torch.Generator().manual_seed(derive_seed(self.cfg.train.seed, 2**31))
        idx = torch.randperm(len(self.dataset), generator=g)[:FIT_ITEMS].tolist()
        return [self.frontend(self.collate([self.dataset[i] for i in idx[k:k + 16]])["wav"]
                              .to(self.device)) for k in range(0, len(idx), 16)]

    # -------------------------------------------------------------- state
    def part_state(self) -> dict[str, torch.Tensor]:
        if self.kind == "vae":
            from energytta.audio.vae import vae_state
            return vae_state(self.part)
        return self.part.state_dict()

    def save(self, pos: Position) -> None:
        """The part file (VAE: with fresh latent statistics) and the resumable state."""
        from energytta.audio.vae import VAE_KEYS
        from energytta.audio.vocoder import VOCODER_KEYS, save_part

        if self.kind == "vae":
            self.part.fit_latent_stats(self.fit_mels)
        save_part(self.part_path, self.part_state(), self.cfg, self.kind,
                  VAE_KEYS if self.kind == "vae" else VOCODER_KEYS)
        tensors = {f"part.{k}": v.detach().cpu().contiguous().clone()
                   for k, v in self.part_state().items()}
        doc = {"step": self.step, "elapsed": self.elapsed, "data": asdict(pos), "rng": rng_state(),
               "optimizer": encode_tree(self.opt.state_dict(), tensors, "optim"),
               "scheduler": encode_tree(self.sched.state_dict(), {})}
        if self.disc is not None:
            tensors.update({f"disc.{k}": v.detach().cpu().clone()
                            for k, v in self.disc.state_dict().items()})
            doc["disc_optimizer"] = encode_tree(self.dopt.state_dict(), tensors, "dopt")
        with atomic_path(self.out / STATE_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"state": json.dumps(doc)})

    def _load(self, path: Path) -> Position:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            doc = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        part = {k[5:]: v for k, v in tensors.items() if k.startswith("part.")}
        # VAE: the saved keys are the codec's minus its vocoder, which keeps its own weights
        self.part.load_state_dict({**self.part.state_dict(), **part})
        self.opt.load_state_dict(decode_tree(doc["optimizer"], tensors))
        self.sched.load_state_dict(decode_tree(doc["scheduler"], {}))
        if self.disc is not None and "disc_optimizer" in doc:
            self.disc.load_state_dict({k[5:]: v for k, v in tensors.items()
                                       if k.startswith("disc.")})
            self.dopt.load_state_dict(decode_tree(doc["disc_optimizer"], tensors))
        set_rng_state(doc["rng"])
        self.step, self.elapsed = int(doc["step"]), float(doc.get("elapsed", 0.0))
        self.console.print(f"resumed from {path} (step {self.step})")
        return Position(**doc["data"])

    # -------------------------------------------------------------- steps
    def train_step(self) -> dict[str, float]:
        """One optimizer step (and one discriminator step with a GAN term) -> logs."""
        t = self.cfg.train
        self.part.train()
        wav = next(self.batches)["wav"].to(self.device)  # (B, S)
        gen = torch.Generator(device=self.device).manual_seed(derive_seed(t.seed, self.step))
        if self.kind == "vae":
            with torch.no_grad():
                mel = self.frontend(wav)
            loss, x, rec, logs = vae_loss(self.part, mel, self.cfg, gen, self.disc)
        else:
            from energytta.audio.vocoder import vocoder_loss
            loss, logs = vocoder_loss(self.part, self.frontend, wav)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {float(loss)} at step {self.step}; lower train.lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.trainable(), clip))
        self.opt.step()
        logs["lr"] = self.sched.get_last_lr()[0]
        self.sched.step()
        if self.disc is not None:
            d_loss = discriminator_loss(self.disc, x, rec)
            self.dopt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.dopt.step()
            logs["disc"] = float(d_loss.detach())
        self.step += 1
        return {"loss": float(loss.detach()), **logs}

    def run(self) -> nn.Module:
        """Train to `train.steps`; save periodically, on Ctrl-C and at the end."""
        t, window = self.cfg.train, Window()
        with StopRequest() as stop, make_progress(self.console) as bar:
            task = bar.add_task("train", total=t.steps, completed=self.step, stats="")
            while self.step < t.steps:
                logs = self.train_step()
                window.add(logs)
                if self.step % max(1, t.log_every) == 0 or self.step == t.steps:
                    means = window.means()
                    rate = window.steps_per_s()
                    self.elapsed += window.count / max(rate, 1e-9)
                    self.metrics.write({"step": self.step, **means, "steps_per_s": rate,
                                        "time": round(self.elapsed, 3)})
                    bar.update(task, stats=format_stats(means, means["lr"], rate))
                    window.reset()
                bar.update(task, completed=self.step)
                if stop.requested:
                    self.save(self.stream.pos)
                    self.console.print(f"interrupted: saved {self.out}; continue with --resume")
                    raise KeyboardInterrupt
                if t.ckpt_every > 0 and self.step % t.ckpt_every == 0:
                    self.save(self.stream.pos)
        self.save(self.stream.pos)
        self.console.print(f"done: {self.part_path}")
        return self.part.eval()


def train_codec(cfg: Config, resume: bool = False) -> nn.Module:
    """Train the codec part named by `cfg.codec.train`; return it (eval mode).

    Args:
        cfg: the full config (see `CodecTrainer`).
        resume: continue from `train.out_dir/train_state.safetensors`.
    """
    return CodecTrainer(cfg, resume).run()
