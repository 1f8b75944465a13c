"""The training loop: one `accelerate` loop for teacher and student, CPU / GPU / DDP alike.

One optimizer step = `train.grad_accum` micro-batches. Everything random in a step is
drawn from generators seeded by (train.seed, step, micro-batch, process index), and the
data order is a seeded permutation per epoch, so `--resume` continues bit-for-bit: the
same batches, masks, dropout and noise as a run that was never interrupted.

Numbered stages of `train()`:
  1. accelerator, output folder, config.yaml
  2. text encoder (frozen, cached per caption), dataset, codec, model, objective, EMA, AdamW
  3. resume from the latest step folder, or fit the codec's latent statistics
  4. steps: forward/backward (accumulated), clip, optimizer, scheduler, EMA, logs
  5. periodic checkpoints and samples; at the end (or on Ctrl-C) a checkpoint, samples,
     and the inference file `out_dir/model.safetensors` (EMA weights)
"""
from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from energytta.checkpoint import (decode_tree, encode_tree, kind_for, latest_checkpoint,
                                  load_codec_state, load_training_state, load_weights,
                                  rng_state, save_inference, save_training_state,
                                  set_rng_state)
from energytta.config import Config
from energytta.errors import UserError
from energytta.train.ema import EMA
from energytta.train.logging import MetricsLog, Window, format_stats, make_progress
from energytta.train.objectives import build_objective
from energytta.train.optim import build_optimizer, keep_config_schedule
from energytta.utils import atomic_path, atomic_write_text, seed_everything

CODEC_FIT_ITEMS = 64  # clips used to fit the mel codec's per-bin statistics at step 0


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


# ------------------------------------------------------------------ data
@dataclass
class Position:
    """Where the data stream stands: the next batch to load is `batch` of `epoch`."""

    epoch: int = 0
    batch: int = 0


class BatchStream:
    """Endless, resumable stream of this process's batches.

    Each epoch is a permutation seeded by (seed, epoch), the same on every process; process
    r takes every world-th index (DistributedSampler's split), cut so that all processes
    get the same number of full batches. Starting from `pos` skips the consumed batches
    without loading them.

    Args:
        dataset: map-style dataset of dicts (see `energytta.data.dataset.collate`).
        collate: the batch collate function.
        batch_size: per-process batch size.
        seed: `train.seed`; rank, world: process index and count.
        num_workers: DataLoader workers.
        pos: start position (a resumed run passes the saved one).
    """

    def __init__(self, dataset: Any, collate: Any, batch_size: int, seed: int, rank: int,
                 world: int, num_workers: int, pos: Position) -> None:
        self.dataset, self.collate, self.batch_size = dataset, collate, batch_size
        self.seed, self.rank, self.world, self.num_workers = seed, rank, world, num_workers
        self.pos = pos
        n = len(dataset)
        self.batches_per_epoch = n // (batch_size * world)
        if self.batches_per_epoch == 0:
            raise UserError(f"the training set has {n} clips, fewer than data.batch_size="
                            f"{batch_size} × {world} processes; lower data.batch_size")

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's index batches for `epoch`."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        perm = torch.randperm(len(self.dataset), generator=g).tolist()
        per_rank = self.batches_per_epoch * self.batch_size
        mine = perm[self.rank::self.world][:per_rank]
        return [mine[i:i + self.batch_size] for i in range(0, per_rank, self.batch_size)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            epoch = self.pos.epoch
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            # worker seeds depend on the epoch only, not on the global RNG at resume time
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, self.rank, 1))
            loader = DataLoader(self.dataset, batch_sampler=self.epoch_batches(epoch)[
                self.pos.batch:], collate_fn=self.collate, num_workers=self.num_workers,
                generator=gen)
            for batch in loader:
                self.pos.batch += 1
                yield batch
            self.pos = Position(epoch + 1, 0)


class TextCache:
    """Frozen text encoder with a CPU cache of each unique caption's states.

    Captions are encoded one at a time, so a caption's states never depend on which
    other captions shared its batch (padding can change float rounding): a resumed run,
    whose cache starts empty, sees exactly the same text features.

    Args:
        encoder: `energytta.text.TextEncoder` (frozen, on the training device).
    """

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions -> (states (B, L, Dt), mask (B, L) bool) on the encoder's device."""
        for c in dict.fromkeys(captions):
            if c not in self.cache:
                states, mask = self.encoder([c])  # (1, L, Dt), (1, L)
                self.cache[c] = states[0, mask[0]].float().cpu()  # (L_c, Dt)
        rows = [self.cache[c] for c in captions]
        L = max(r.shape[0] for r in rows)
        states = torch.zeros(len(rows), L, rows[0].shape[1])
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, :r.shape[0]], mask[i, :r.shape[0]] = r, True
        device = next(self.encoder.parameters()).device
        return states.to(device), mask.to(device)


# ------------------------------------------------------------------ helpers
class LossModule(nn.Module):
    """model + objective as one module, so DDP sees the whole loss inside one forward.

    DDP synchronises gradients for what runs inside its wrapped `forward`; the objective
    calls both `model.backbone` and `model.head.loss`, so the wrapper runs it all.
    The objective's own trainable parts (e.g. the student's projections) are a submodule.
    """

    def __init__(self, model: nn.Module, objective: Any) -> None:
        super().__init__()
        self.model = model
        self.objective = objective  # registered only if it is an nn.Module

    def forward(self, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model, latents, text, text_mask, generator)


class StopRequest:
    """Turns the first Ctrl-C into a flag checked between steps (the loop then saves a
    checkpoint and exits); a second Ctrl-C interrupts immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._prev: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        try:
            self._prev = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: keep the default behaviour
            self._prev = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)


def _module_state(obj: Any) -> dict[str, torch.Tensor]:
    return obj.state_dict() if isinstance(obj, nn.Module) else {}


def _build_accelerator(cfg: Config) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # unused parameters happen legitimately (e.g. the null text when no caption is dropped)
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # accelerate picks gloo for several CPU processes (torchrun) only when told cpu=True
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    try:
        return Accelerator(cpu=cpu, mixed_precision=cfg.train.mixed_precision,
                           gradient_accumulation_steps=max(1, cfg.train.grad_accum),
                           kwargs_handlers=[ddp])
    except (ValueError, TypeError) as e:
        raise UserError(f"train.mixed_precision={cfg.train.mixed_precision!r} cannot be used "
                        f"here ({str(e).splitlines()[0]}); use 'no', 'bf16' or 'fp16' (GPU)"
                        ) from None


# ------------------------------------------------------------------ trainer
class Trainer:
    """State and steps of one training run; `train()` is the entry point.

    Args:
        cfg: the full config.
        resume: continue from the latest step folder of `cfg.train.out_dir`.
    """

    def __init__(self, cfg: Config, resume: bool) -> None:
        from energytta.audio.codec import build_codec
        from energytta.data.dataset import build_dataset, collate
        from energytta.models.tta import TTAModel
        from energytta.text import TextEncoder

        self.cfg, t = cfg, cfg.train
        seed_everything(t.seed)  # the model's initial weights depend on train.seed only
        self.acc = _build_accelerator(cfg)  # 1
        self.device, self.main = self.acc.device, self.acc.is_main_process
        self.console = Console(quiet=not self.main)
        self.out = Path(t.out_dir)
        ckpt = self._checkpoint_to_resume(resume)
        if self.main:
            atomic_write_text(self.out / "config.yaml",
                              yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        encoder = TextEncoder(cfg.text.model, cfg.text.max_length).to(self.device).eval()  # 2
        self.text, self.text_dim = TextCache(encoder), int(encoder.dim)
        self.dataset, self.collate = build_dataset(cfg, "train"), collate
        self.codec = build_codec(cfg).to(self.device).eval()
        self.model = TTAModel(cfg, self.text_dim).to(self.device)
        if cfg.head.kind == "energy":  # init from / freeze the teacher before EMA + AdamW
            from energytta.train.distill import prepare_student
            prepare_student(cfg, self.model, self.device)
        self.objective = build_objective(cfg, self.model, self.device)
        self.ema = EMA(self.model, t.ema_decay)
        self.opt, self.sched = build_optimizer(self.model, cfg, extra=self.objective)
        self.step, self.elapsed, self.last_lr, pos = 0, 0.0, 0.0, Position()
        if ckpt is not None:  # 3
            pos = self._load(ckpt)
        else:
            self._fit_codec()
        self.loss_module, self.acc_opt = self.acc.prepare(
            LossModule(self.model, self.objective), self.opt)
        self.stream = BatchStream(self.dataset, collate, cfg.data.batch_size, t.seed,
                                  self.acc.process_index, self.acc.num_processes,
                                  cfg.data.num_workers, pos)
        self.batches = iter(self.stream)
        # only the main process rewrites (on resume: truncates) and appends the log
        self.metrics = MetricsLog(self.out / "metrics.jsonl",
                                  (self.step if ckpt else 0) if self.main else None)
        self.last_saved = self.step if ckpt is not None else -1
        self.last_sampled = -1

    # -------------------------------------------------------------- set-up
    def _checkpoint_to_resume(self, resume: bool) -> Path | None:
        latest = latest_checkpoint(self.out)
        if latest is not None and not resume:
            raise UserError(f"{self.out} already holds checkpoints ({latest.name}); pass "
                            "--resume to continue that run or set train.out_dir=NEW_FOLDER")
        if resume and latest is None:
            self.console.print(f"[yellow]--resume: no checkpoint in {self.out}; "
                               "starting a fresh run")
        return latest if resume else None

    def _fit_codec(self) -> None:
        """Fit the mel codec's per-bin statistics on a fixed, seeded set of training clips
        (with cached latents, load the codec state stored beside the cache instead; a
        student with a teacher takes the teacher's).

        Every process fits on the same clips; the result is then broadcast from the main
        process anyway, so all ranks normalise identically whatever the dataset does.
        """
        if hasattr(self.dataset, "codec_state"):  # cached latents: use the cache's codec
            load_weights(self.codec, self.dataset.codec_state, Path(self.cfg.data.train),
                         "codec")
            return
        if self.cfg.head.kind == "energy" and self.cfg.teacher.ckpt:
            # the student must see latents normalised exactly as its teacher's were: the
            # distillation targets and the initial backbone weights assume that latent space
            ckpt = Path(self.cfg.teacher.ckpt)
            load_weights(self.codec, load_codec_state(ckpt), ckpt, "codec")
            return
        if not hasattr(self.codec, "fit_stats"):
            return
        g = torch.Generator().manual_seed(derive_seed(self.cfg.train.seed, 2**31))
        idx = torch.randperm(len(self.dataset), generator=g)[:CODEC_FIT_ITEMS].tolist()
        wavs = [self.collate([self.dataset[i] for i in idx[k:k + 16]])["wav"]
                for k in range(0, len(idx), 16)]
        self.codec.fit_stats([w.to(self.device) for w in wavs])
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast
            for b in self.codec.buffers():
                b.copy_(broadcast(b.clone(), from_process=0))

    def _load(self, folder: Path) -> Position:
        ck = load_training_state(folder)
        st = ck["state"]
        load_weights(self.model, ck["model"], folder)
        load_weights(self.ema.module, ck["ema"], folder, "EMA")
        self.ema.num_updates = int(st["ema_updates"])
        load_weights(self.codec, ck["codec"], folder, "codec")
        if isinstance(self.objective, nn.Module):
            load_weights(self.objective, ck.get("objective", {}), folder, "objective")
        try:
            self.opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as e:
            raise UserError(f"{folder}: optimizer state does not fit this model ({e}); "
                            "resume with the config the run was started with") from None
        fresh = [dict(vars(f)) for f in self.sched.lr_lambdas]
        self.sched.load_state_dict(decode_tree(st["scheduler"], {}))
        saved = keep_config_schedule(self.sched, fresh)
        if saved is not None:
            self.console.print(
                f"[yellow]the lr schedule follows this config (train.steps "
                f"{fresh[0]['total_steps']}, warm-up {fresh[0]['warmup_steps']}), not the "
                f"saved run's ({saved['total_steps']}, {saved['warmup_steps']})[/yellow]")
        set_rng_state(st["rng"])
        self.step, self.elapsed = int(st["step"]), float(st.get("elapsed", 0.0))
        self.console.print(f"resumed from {folder} (step {self.step})")
        return Position(**st["data"])

    # -------------------------------------------------------------- one step
    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """A collated batch -> (latents (B,C,T,F), text (B,L,Dt), text_mask (B,L)) on device."""
        if "latents" in batch:
            lat = batch["latents"].to(self.device)
            text, mask = batch["text"].to(self.device), batch["text_mask"].to(self.device)
        else:
            with torch.no_grad():
                lat = self.codec.encode(batch["wav"].to(self.device))
            text, mask = self.text(batch["captions"])
        pt, pf = self.cfg.model.patch_t, self.cfg.model.patch_f
        lat = lat[:, :, :lat.shape[2] // pt * pt]  # whole time patches only
        n = lat.shape[2] // pt * (lat.shape[3] // pf)
        if n > self.model.max_tokens:
            raise UserError(f"training crops give {n} tokens but audio.max_seconds="
                            f"{self.cfg.audio.max_seconds} allows {self.model.max_tokens}; "
                            "raise audio.max_seconds or lower audio.crop_seconds")
        return lat, text, mask

    def _train_step(self) -> tuple[dict[str, float], float]:
        """One optimizer step over grad_accum micro-batches -> (mean logs, grad norm)."""
        t, logs, grad_norm = self.cfg.train, {}, float("nan")
        self.loss_module.train()
        for micro in range(max(1, t.grad_accum)):
            lat, text, mask = self._inputs(next(self.batches))
            seed = derive_seed(t.seed, self.step, micro, self.acc.process_index)
            torch.manual_seed(seed)  # dropout (and any draw without a generator)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            gen = torch.Generator(device=self.device).manual_seed(seed)
            with self.acc.accumulate(self.loss_module):
                loss, terms = self.loss_module(lat, text, mask, gen)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"loss is {float(loss)} at step {self.step}; lower "
                                       "train.lr or check the data")
                self.acc.backward(loss)
                if self.acc.sync_gradients:
                    clip = t.grad_clip if t.grad_clip > 0 else float("inf")
                    grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), clip))
                self.acc_opt.step()
                self.acc_opt.zero_grad(set_to_none=True)
            for k, v in {**terms, "loss": float(loss.detach())}.items():
                logs[k] = logs.get(k, 0.0) + float(v) / max(1, t.grad_accum)
        self.last_lr = self.lr()  # the lr this step used, before the scheduler moves on
        self.sched.step()
        self.ema.update(self.model)
        self.step += 1
        return logs, grad_norm

    # -------------------------------------------------------------- outputs
    def lr(self) -> float:
        group = self.opt.param_groups[0]
        return group["lr"] / group.get("lr_mult", 1.0)

    def _log(self, window: Window, grad_norm: float) -> dict[str, Any]:
        means = window.means()
        if self.acc.num_processes > 1:  # average the loss terms over processes
            keys = sorted(means)
            vals = self.acc.reduce(torch.tensor([means[k] for k in keys], device=self.device,
                                                dtype=torch.float64), "mean")
            means = dict(zip(keys, vals.tolist()))
        record = {"step": self.step, **means, "lr": self.last_lr, "grad_norm": grad_norm,
                  "steps_per_s": window.steps_per_s(), "time": round(self.elapsed, 3)}
        if self.main:
            self.metrics.write(record)
        window.reset()
        return record

    def save(self) -> None:
        """Training state at the current step, written by the main process only (every
        process holds the same weights and optimizer state, so no gather is needed)."""
        if self.main and self.last_saved != self.step:
            state = {"scheduler": encode_tree(self.sched.state_dict(), {}),
                     "rng": rng_state(), "data": asdict(self.stream.pos),
                     "ema_updates": self.ema.num_updates, "elapsed": self.elapsed,
                     "world_size": self.acc.num_processes}
            save_training_state(self.out, self.step, model=self.model, ema=self.ema.module,
                                optimizer=self.opt, codec=self.codec, cfg=self.cfg,
                                state=state, text_dim=self.text_dim,
                                keep_last=self.cfg.train.keep_last,
                                extra={"objective": _module_state(self.objective)})
        self.last_saved = self.step

    @torch.no_grad()
    def sample(self) -> Path | None:
        """Generate `train.sample_prompts` with the EMA weights (seeded) -> wav + PNG."""
        if not self.main or not self.cfg.train.sample_prompts:
            return None
        from energytta.audio.io import write_wav
        from energytta.audio.plot import save_spectrogram_png
        from energytta.models.patchify import unpatchify
        from energytta.sampling import decode

        cfg, model, prompts = self.cfg, self.ema.module.eval(), self.cfg.train.sample_prompts
        s = cfg.sample
        text, mask = self.text(list(prompts))
        gen = torch.Generator(device=self.device).manual_seed(s.seed)
        tokens = decode(model.backbone, model.head, text, mask, model.tokens_for(s.duration),
                        iterations=s.iterations, cfg=s.cfg, cfg_schedule=s.cfg_schedule,
                        temperature=s.temperature, generator=gen)  # (B, N, d)
        lat = unpatchify(tokens, model.latent_channels, model.frames_for(s.duration),
                         model.latent_freq, cfg.model.patch_t, cfg.model.patch_f)
        mel = self.codec.decode(lat)  # (B, n_mels, T)
        wav = self.codec.vocode(mel, generator=gen)  # (B, S)
        folder = self.out / "samples" / f"step-{self.step:07d}"
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            for i, prompt in enumerate(prompts):
                write_wav(tmp / f"{i:02d}.wav", wav[i].float().cpu().numpy(), cfg.audio.sample_rate)
                save_spectrogram_png(mel[i].float().cpu(), tmp / f"{i:02d}.png", title=prompt,
                                     sample_rate=cfg.audio.sample_rate,
                                     hop_length=cfg.audio.hop_length)
            (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
        return folder

    def export(self) -> Path | None:
        """The inference file `out_dir/model.safetensors` with the EMA weights."""
        if not self.main:
            return None
        return save_inference(self.out / "model.safetensors", self.ema.module, self.codec,
                              self.cfg, kind_for(self.cfg), text_dim=self.text_dim)

    # -------------------------------------------------------------- the loop
    def _stop_everywhere(self, stop: StopRequest) -> bool:
        """Whether any process got Ctrl-C (all processes then stop at the same step)."""
        if self.acc.num_processes == 1:
            return stop.requested
        flag = torch.tensor([float(stop.requested)], device=self.device)
        return bool(self.acc.reduce(flag, "sum").item() > 0)

    def run(self) -> nn.Module:
        t = self.cfg.train
        window = Window()
        with StopRequest() as stop, make_progress(self.console, not self.main) as bar:
            task = bar.add_task("train", total=t.steps, completed=self.step, stats="")
            while self.step < t.steps:
                t0 = time.perf_counter()
                logs, grad_norm = self._train_step()
                self.elapsed += time.perf_counter() - t0
                window.add(logs)
                if self.step % max(1, t.log_every) == 0 or self.step == t.steps:
                    rec = self._log(window, grad_norm)
                    bar.update(task, stats=format_stats(rec, rec["lr"], rec["steps_per_s"]))
                bar.update(task, completed=self.step)
                if self._stop_everywhere(stop):
                    self.save()
                    self.console.print(f"interrupted: saved {self.out}/step-{self.step:07d}; "
                                       "continue with --resume")
                    raise KeyboardInterrupt
                if t.ckpt_every > 0 and self.step % t.ckpt_every == 0:
                    self.save()
                if t.sample_every > 0 and self.step % t.sample_every == 0:
                    self.sample()
                    self.last_sampled = self.step
        self.finish()
        return self.model

    def finish(self) -> None:
        """Final checkpoint, samples and inference export."""
        self.save()
        folder = self.sample() if self.last_sampled != self.step else None
        path = self.export()
        if self.main:
            msg = f"done: {path}" + (f", samples in {folder}" if folder else "")
            self.console.print(msg)
        self.acc.wait_for_everyone()


def train(cfg: Config, resume: bool = False) -> nn.Module:
    """Train the model described by `cfg`; return the raw (unwrapped) trained model.

    Args:
        cfg: the full config (`train.*` drives the loop, `head.kind` picks the objective).
        resume: continue bit-for-bit from the latest `step-XXXXXXX/` in `train.out_dir`.
    With `codec.train` set ("vae" | "vocoder") it trains that codec part instead
    (`energytta.train.codec_train`) and returns it.
    """
    if cfg.codec.train:
        from energytta.train.codec_train import train_codec
        return train_codec(cfg, resume)
    return Trainer(cfg, resume).run()
