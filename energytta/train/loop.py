"""The training loop: one `accelerate` loop for every objective, CPU / GPU / DDP / FSDP alike.

The loop owns the data stream, seeding, Ctrl-C, checkpoints, resume, EMA, logging and the
validation stage; what is trained and how it is scored is the objective's
(`energytta.train.objectives`: teacher, student, vae, vocoder, classifier).

One optimizer step = `train.grad_accum` micro-batches. Everything random in a step is
drawn from generators seeded by (train.seed, step, micro-batch, process index), and the
data order is a seeded permutation per epoch, so `--resume` continues bit-for-bit: the
same batches, masks, dropout and noise as a run that was never interrupted.

Numbered stages of `train()`:
  1. accelerator, output folder (config.yaml once set-up has succeeded)
  2. training set, objective (it builds the model), EMA, AdamW, validation set
  3. resume from the latest step folder, or let the objective fit its data statistics
  4. steps: forward/backward (accumulated), clip, optimizer, scheduler, EMA, logs
  5. periodic checkpoints, validation and samples; at the end (or on Ctrl-C / SIGTERM) a
     checkpoint, and at the end the objective's export (EMA weights), validation and samples
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from torch import nn

from energytta.checkpoint import (RESUME_KEYS, decode_tree, encode_tree, list_checkpoints,
                                  load_training_state, load_weights, rng_state,
                                  save_training_state, set_rng_state)
from energytta.config import Config
from energytta.config_rules import validate
from energytta.errors import UserError
from energytta.locks import folder_lock
from energytta.train.distributed import (check_fsdp, check_same_checkpoint, enable_cpu_fsdp,
                                         full_optimizer_state, full_state, is_fsdp,
                                         load_full_optimizer_state, whole_parameters)
from energytta.train.init_from import check_codec, load_init
from energytta.train.interrupt import StopRequest, Stopped
from energytta.train.logging import MetricsLog, Window, format_stats, make_progress, read_metrics
from energytta.train.objectives import (TrainContext, build_objective, objective_class,
                                        objective_name)
from energytta.train.optim import EMA, build_optimizer, keep_config_schedule
from energytta.train.seeds import seed_globals, seed_step
from energytta.train.stream import (BatchStream, Position, make_stream,  # noqa: F401
                                    resume_position)  # BatchStream: part of this API
from energytta.utils import atomic_write_text

# codec runs before the one loop kept their state in this file; it cannot be resumed
LEGACY_CODEC_STATE = "train_state.safetensors"


class LossModule(nn.Module):
    """model + objective as one module, so DDP sees the whole loss inside one forward.

    DDP synchronises gradients for what runs inside its wrapped `forward`; the objective
    calls the model (and its own trainable parts, a submodule when it is an nn.Module).
    """

    def __init__(self, model: nn.Module, objective: Any) -> None:
        super().__init__()
        self.model = model
        self.objective = objective  # registered only if it is an nn.Module

    def forward(self, generator: torch.Generator, **inputs: Any
                ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model, **inputs, generator=generator)


def _module_state(obj: Any) -> dict[str, torch.Tensor]:
    return obj.state_dict() if isinstance(obj, nn.Module) else {}


def find_unused_parameters(cfg: Config) -> bool:
    """DDP's `find_unused_parameters`: `train.find_unused_parameters`, or on when the
    objective can leave a trainable parameter without a gradient in a step."""
    return cfg.train.find_unused_parameters or objective_class(cfg).unused_parameters


def _build_accelerator(cfg: Config) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters(cfg))
    # accelerate picks gloo for several CPU processes (torchrun) only when told cpu=True
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    try:
        acc = Accelerator(cpu=cpu, mixed_precision=cfg.train.mixed_precision,
                          gradient_accumulation_steps=max(1, cfg.train.grad_accum),
                          kwargs_handlers=[ddp])
    except (ValueError, TypeError) as e:
        raise UserError(f"train.mixed_precision={cfg.train.mixed_precision!r} cannot be used "
                        f"here ({str(e).splitlines()[0]}); use 'no', 'bf16' or 'fp16' (GPU)"
                        ) from None
    enable_cpu_fsdp(acc)
    return acc


# ------------------------------------------------------------------ trainer
class Trainer:
    """State and steps of one training run; `train()` is the entry point.

    Args:
        cfg: the full config.
        resume: continue from the latest step folder of `cfg.train.out_dir`.
    """

    def __init__(self, cfg: Config, resume: bool) -> None:
        from energytta.data.dataset import build_dataset, collate

        self.cfg, t = validate(cfg), cfg.train  # also a Config built in code, not loaded
        seed_globals(t.seed)  # the model's initial weights depend on train.seed only
        self.acc = _build_accelerator(cfg)  # 1
        self.device, self.main = self.acc.device, self.acc.is_main_process
        self.console = Console(quiet=not self.main)
        self.out = Path(t.out_dir)
        name = objective_name(cfg)
        ckpt, loaded = self._checkpoint_to_resume(resume)
        self.dataset, self.collate = build_dataset(cfg, "train"), collate  # 2
        val_data = self._val_dataset()
        self.context = TrainContext(self.device, self.dataset, collate)
        self.objective = build_objective(cfg, self.context)
        self.model = self.objective.model
        check_fsdp(self.acc, self.objective)
        # a fresh run may start from any model file's weights (before the EMA copies them)
        init = load_init(cfg, self.model, self.objective.kind) if (
            ckpt is None and t.init_from) else None
        self.ema = EMA(self.model, t.ema_decay) if self.objective.ema else None
        self.opt, self.sched = build_optimizer(self.model, cfg, extra=self.objective)
        self.step, self.elapsed, self.last_lr, pos = 0, 0.0, 0.0, Position()
        self.window = Window()  # the log row being summed; restored on resume
        if ckpt is not None:  # 3
            pos = self._load(ckpt, loaded)
        else:
            self._fit()
            if init is not None:
                check_codec(t.init_from, self.objective.codec, init[1],
                            hasattr(self.dataset, "codec_state"))
                self.console.print(f"initialised from {init[0]} (train.init_from)")
        self.loss_module, self.acc_opt = self.acc.prepare(
            LossModule(self.model, self.objective), self.opt)
        self.fsdp = is_fsdp(self.acc)
        if self.fsdp:
            if ckpt is not None:  # the sharded parameters exist only now
                self._load_optimizer(ckpt, loaded)
            self.console.print(f"FSDP: weights, gradients and optimizer state sharded over "
                               f"{self.acc.num_processes} processes")
        self.stream = make_stream(self.dataset, collate, cfg.data.batch_size, t.seed,
                                  self.acc.process_index, self.acc.num_processes,
                                  cfg.data.num_workers, pos)
        self.batches = self.stream.indexed()
        self.validation = self._validation(val_data)
        # only the main process rewrites (on resume: truncates) and appends the log
        self.metrics = MetricsLog(self.out / "metrics.jsonl",
                                  (self.step if ckpt else 0) if self.main else None)
        self.last_saved = self.step if ckpt is not None else -1
        self.last_sampled = -1
        self.last_validated = self._last_validated() if ckpt is not None else -1
        if self.main:  # only once set-up succeeded: a failed start leaves no config behind
            atomic_write_text(self.out / "config.yaml",
                              yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.console.print(f"objective: {name}")

    # -------------------------------------------------------------- set-up
    def _checkpoint_to_resume(self, resume: bool) -> tuple[Path | None, dict[str, Any]]:
        """The step folder to resume from and its loaded contents (None, {}: a fresh run)."""
        if (self.out / LEGACY_CODEC_STATE).is_file():
            raise UserError(f"{self.out} holds a codec run of an older energytta "
                            f"({LEGACY_CODEC_STATE}), which cannot be resumed; its part file "
                            "still loads: start a new train.out_dir (codec.path= or "
                            "codec.vocoder_path= that file continues from it)")
        found = list_checkpoints(self.out)
        if resume:  # several machines: all processes must see the same newest step folder
            check_same_checkpoint(self.acc, found[-1] if found else None, self.out)
        if found and not resume:
            raise UserError(f"{self.out} already holds checkpoints ({found[-1].name}); pass "
                            "--resume to continue that run or set train.out_dir=NEW_FOLDER")
        if resume and not found:
            self.console.print(f"[yellow]--resume: no checkpoint in {self.out}; "
                               "starting a fresh run")
        if not resume or not found:
            return None, {}
        return self._newest_readable(found)

    def _newest_readable(self, found: list[Path]) -> tuple[Path, dict[str, Any]]:
        """The newest step folder whose files all read; a damaged newer one (a truncated
        optim.safetensors: a disk error, a copy cut short) is skipped with a warning and
        is replaced when training reaches its step again."""
        first_error: UserError | None = None
        for folder in reversed(found):
            try:
                return folder, load_training_state(folder, require=RESUME_KEYS)
            except UserError as e:
                first_error = first_error or e
                self.console.print(f"[yellow]--resume: skipping damaged {folder.name} ({e})")
        raise UserError(f"--resume: no readable checkpoint in {self.out} ({first_error}); "
                        "delete the damaged step-XXXXXXX folders to start afresh, or set "
                        "train.out_dir=NEW_FOLDER") from None

    def _val_dataset(self) -> Any:
        """The validation set (eval crops) when validation is on; checked at start-up."""
        if self.cfg.train.val_every <= 0 or not self.main:
            return None
        val = self.cfg.data.val
        if self.cfg.data.kind == "captions" and not Path(val).expanduser().is_file():
            # caption-only training needs nothing but its captions: a recipe's default
            # validation manifest that is not there turns validation off, loudly
            self.console.print(f"[yellow]validation off: data.val={val!r} is not a file; "
                               "set data.val=CAPTIONS.jsonl (with attributes) for val rows")
            return None
        from energytta.train.validation import val_dataset
        return val_dataset(self.cfg)

    def _validation(self, dataset: Any) -> Any:
        if dataset is None:
            return None
        from energytta.train.validation import Validation
        return Validation(self.cfg, dataset, self.collate, self.objective, self.device)

    def _fit(self) -> None:
        """A fresh run: the objective fits its data statistics (e.g. the mel codec's).

        Every process fits on the same clips; the codec's result is then broadcast from the
        main process anyway, so all ranks normalise identically whatever the dataset does.
        """
        self.objective.fit(self.context)
        codec = self.objective.codec
        if self.acc.num_processes > 1 and codec is not None:
            from accelerate.utils import broadcast
            for b in codec.buffers():
                b.copy_(broadcast(b.clone(), from_process=0))

    def _load(self, folder: Path, ck: dict[str, Any]) -> Position:
        """Restore weights, optimizer, schedule, RNG and data position from `ck`, the loaded
        `folder` -> the data stream's position."""
        st = ck["state"]
        self._same_preprocessing(ck["config"], folder)
        try:
            load_weights(self.model, ck["model"], folder)
        except UserError:
            self._name_changed_keys(ck["config"], folder)
            raise
        if self.ema is not None:
            load_weights(self.ema.module, ck["ema"], folder, "EMA")
            self.ema.num_updates = int(st["ema_updates"])
        if self.objective.codec is not None:
            load_weights(self.objective.codec, ck["codec"], folder, "codec")
        if isinstance(self.objective, nn.Module):
            load_weights(self.objective, ck.get("objective", {}), folder, "objective")
        if not is_fsdp(self.acc):  # FSDP: once its parameters are sharded (after prepare)
            self._load_optimizer(folder, ck)
        set_rng_state(st["rng"])
        self.step, self.elapsed = int(st["step"]), float(st.get("elapsed", 0.0))
        self.window.load(st.get("log_window", {}))
        self.console.print(f"resumed from {folder} (step {self.step})")
        return self._resume_position(st, ck["config"])

    def _load_optimizer(self, folder: Path, ck: dict[str, Any]) -> None:
        """Restore the optimizer (its full state, sliced under FSDP) and the lr schedule."""
        try:
            load_full_optimizer_state(self.opt, ck["optimizer"])
        except (ValueError, KeyError, IndexError) as e:
            raise UserError(f"{folder}: optimizer state does not fit this model ({e}); "
                            "resume with the config the run was started with") from None
        fresh = [dict(vars(f)) for f in self.sched.lr_lambdas]
        self.sched.load_state_dict(decode_tree(ck["state"]["scheduler"], {}))
        saved = keep_config_schedule(self.sched, fresh)
        if saved is not None:
            self.console.print(
                f"[yellow]the lr schedule follows this config (train.steps "
                f"{fresh[0]['total_steps']}, warm-up {fresh[0]['warmup_steps']}), not the "
                f"saved run's ({saved['total_steps']}, {saved['warmup_steps']})[/yellow]")

    def _resume_position(self, st: dict[str, Any], saved: Config) -> Position:
        """The saved data position, regrouped when the process count or batch size changed
        (`resume_position`: the global sample stream continues where it stopped)."""
        world, batch = self.acc.num_processes, self.cfg.data.batch_size
        was = int(st.get("world_size", world)), saved.data.batch_size
        pos = resume_position(Position(**st["data"]), *was, world, batch)
        if was != (world, batch):
            self.console.print(
                f"the run had {was[0]} process(es) × data.batch_size={was[1]}, this resume "
                f"{world} × {batch}: epoch {pos.epoch} continues at sample {pos.start}")
        return pos

    def _same_preprocessing(self, saved: Config, folder: Path) -> None:
        """The audio a run trains on must not change on --resume: the weights would load and
        the model would quietly see other inputs from then on (UserError)."""
        was, now = saved.codec.preprocess, self.cfg.codec.preprocess
        if self.cfg.codec.name == "audioldm" and was != now:
            raise UserError(f"--resume {folder}: the run was trained with codec.preprocess="
                            f"{was} but the config has {now}; add codec.preprocess={was} to "
                            "resume it, or set train.out_dir=NEW_FOLDER")

    def _name_changed_keys(self, saved: Config, folder: Path) -> None:
        """A model that does not fit its checkpoint is usually an override on --resume:
        name the keys that differ from the run's saved config (UserError), if any."""
        # both configs in today's layout (`from_saved_dict` migrated the saved one): a
        # head of another kind has other keys, so a key the run lacks reads as None
        changed = [(f"{sec}.{k}", v, asdict(getattr(saved, sec)).get(k))
                   for sec in ("audio", "codec", "text", "model", "head")
                   for k, v in asdict(getattr(self.cfg, sec)).items()
                   if asdict(getattr(saved, sec)).get(k) != v]
        if changed:
            keys = ", ".join(f"{k}={v!r} (the run has {was!r})" for k, v, was in changed[:3])
            raise UserError(f"--resume {folder}: {keys} changed since the run started; drop "
                            "the override to resume, or set train.out_dir=NEW_FOLDER")

    def _last_validated(self) -> int:
        """The step of the last validation row the resumed run kept (-1 if none)."""
        rows = read_metrics(self.out / "metrics.jsonl", stage="val")
        return max((r["step"] for r in rows), default=-1)

    # -------------------------------------------------------------- one step
    def _next_inputs(self) -> dict[str, Any]:
        """The next training batch as the objective's inputs (manifest items attached)."""
        indices, batch = next(self.batches)
        items = getattr(self.dataset, "items", None)
        batch["items"] = [items[i] for i in indices] if items is not None else None
        return self.objective.inputs(batch)

    def _train_step(self) -> tuple[dict[str, float], float]:
        """One optimizer step over grad_accum micro-batches -> (mean logs, grad norm)."""
        t, logs, grad_norm = self.cfg.train, {}, float("nan")
        self.loss_module.train()
        for micro in range(max(1, t.grad_accum)):
            inputs = self._next_inputs()
            gen = seed_step(self.device, t.seed, self.step, micro, self.acc.process_index)
            with self.acc.accumulate(self.loss_module):
                loss, terms = self.loss_module(gen, **inputs)
                if not torch.isfinite(loss):
                    raise UserError(self._diverged(float(loss.detach())))
                self.acc.backward(loss)
                if self.acc.sync_gradients:
                    clip = t.grad_clip if t.grad_clip > 0 else float("inf")
                    grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), clip))
                self.acc_opt.step()
                self.acc_opt.zero_grad(set_to_none=True)
            terms = {**terms}
            terms.setdefault("loss", float(loss.detach()))  # an objective may log its own
            for k, v in terms.items():
                logs[k] = logs.get(k, 0.0) + float(v) / max(1, t.grad_accum)
        self.last_lr = self.lr()  # the lr this step used, before the scheduler moves on
        self.sched.step()
        if self.ema is not None:
            if self.fsdp:
                with whole_parameters(self.model):  # the EMA averages whole weights
                    self.ema.update(self.model)
            else:
                self.ema.update(self.model)
        self.step += 1
        return logs, grad_norm

    def _diverged(self, loss: float) -> str:
        """The one line for a non-finite loss: the knobs, and the checkpoint that is kept."""
        t, found = self.cfg.train, list_checkpoints(self.out)
        # the newest checkpoint may already hold the weights that diverged: say so
        kept = (f"; the checkpoints so far are kept (newest {found[-1].name}, possibly "
                "already diverged)") if found else ""
        return (f"training diverged: the loss is {loss} at step {self.step + 1} "
                f"(train.lr={t.lr:g}, train.grad_clip={t.grad_clip:g}); lower train.lr or "
                f"train.grad_clip, or check the data{kept}")

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

    def _eval_model(self) -> nn.Module:
        """What validation, samples and the export use: the EMA weights, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def save(self) -> None:
        """Training state at the current step, written by the main process only (under DDP
        every process holds the same weights and optimizer state; under FSDP every process
        first gathers them whole)."""
        if self.last_saved == self.step:
            return
        window = self._window_state()  # every process: a collective under DDP
        model, opt = self.model, self.opt
        if is_fsdp(self.acc):  # collectives: every process gathers, the main one writes
            model, opt = full_state(self.model), full_optimizer_state(self.opt)
        if self.main:
            state = {"scheduler": encode_tree(self.sched.state_dict(), {}),
                     "rng": rng_state(), "data": asdict(self.stream.pos),
                     "ema_updates": self.ema.num_updates if self.ema is not None else 0,
                     "elapsed": self.elapsed, "world_size": self.acc.num_processes,
                     "log_window": window}
            save_training_state(self.out, self.step, model=model,
                                ema=self.ema.module if self.ema is not None else None,
                                optimizer=opt, codec=self.objective.codec, cfg=self.cfg,
                                state=state, text_dim=self.objective.text_dim,
                                keep_last=self.cfg.train.keep_last,
                                extra={"objective": _module_state(self.objective)},
                                kind=self.objective.kind)
        self.last_saved = self.step

    def _window_state(self) -> dict[str, Any]:
        """The log row in progress; under DDP its sums averaged over processes. A row's
        value is the mean over processes of sums / count, which is linear in the sums, so
        every process resuming from the averaged sums logs what the uninterrupted run does."""
        state = self.window.state()
        if self.acc.num_processes > 1 and state["sums"]:
            keys = sorted(state["sums"])
            vals = self.acc.reduce(torch.tensor([state["sums"][k] for k in keys],
                                                device=self.device, dtype=torch.float64), "mean")
            state["sums"] = dict(zip(keys, vals.tolist()))
        return state

    def validate(self) -> None:
        """The validation stage (main process): one metrics row and one console line."""
        if self.validation is not None and self.main:
            values = self.validation.run(self._eval_model())
            self.metrics.write({"step": self.step, "stage": "val",
                                **{f"val/{k}": v for k, v in values.items()}})
            shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
            self.console.print(f"val @ step {self.step}: {shown}")
        self.last_validated = self.step

    @torch.no_grad()
    def sample(self) -> Path | None:
        """The objective's samples from the EMA weights -> out/samples/step-XXXXXXX/."""
        if not self.main:
            return None
        folder = self.out / "samples" / f"step-{self.step:07d}"
        return self.objective.generate(self._eval_model().eval(), folder)

    def export(self) -> Path | None:
        """The objective's export (the inference file, or a codec part's file)."""
        if not self.main:
            return None
        return self.objective.export(self._eval_model(), self.out)

    # -------------------------------------------------------------- the loop
    def _stop_everywhere(self, stop: StopRequest) -> bool:
        """Whether any process got Ctrl-C (all processes then stop at the same step)."""
        return self._any_process(stop.requested)

    def _any_process(self, flag: bool) -> bool:
        """Whether `flag` is set on any process (the same answer on every process)."""
        if self.acc.num_processes == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        return bool(self.acc.reduce(value, "sum").item() > 0)

    def _out_of_time(self, deadline: float | None) -> bool:
        """`train.max_minutes` of this invocation's loop are spent (checked on every process)."""
        if deadline is None or not self._any_process(time.monotonic() > deadline):
            return False
        self.console.print(f"train.max_minutes={self.cfg.train.max_minutes} reached at step "
                           f"{self.step}; finishing (continue with --resume)")
        return True

    def run(self) -> nn.Module:
        t, window = self.cfg.train, self.window
        # a wall budget for this invocation (a rented GPU, a time slot): the run finishes
        # as at train.steps (checkpoint, validation, export) and --resume continues it
        deadline = time.monotonic() + 60 * t.max_minutes if t.max_minutes > 0 else None
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
                    raise Stopped(stop.signum)
                if t.ckpt_every > 0 and self.step % t.ckpt_every == 0:
                    self.save()
                if t.val_every > 0 and self.step % t.val_every == 0:
                    self.validate()
                if t.sample_every > 0 and self.step % t.sample_every == 0:
                    self.sample()
                    self.last_sampled = self.step
                if self._out_of_time(deadline):
                    break
        self.finish()
        return self.model

    def finish(self) -> None:
        """Final checkpoint and export, then validation and samples: the model is on disk
        before anything that may still fail (a prompt, a plot) runs."""
        self.save()
        path = self.export()
        if self.last_validated != self.step:
            self.validate()
        folder = self.sample() if self.last_sampled != self.step else None
        if self.main:
            msg = f"done: {path}" + (f", samples in {folder}" if folder else "")
            self.console.print(msg)
        self.acc.wait_for_everyone()


def train(cfg: Config, resume: bool = False) -> nn.Module:
    """Train what `cfg` describes (see `energytta.train.objectives`); return the raw
    (unwrapped) trained model: a TTAModel, or the codec part / classifier.

    Args:
        cfg: the full config (`train.*` drives the loop, `train.objective` / `codec.train` /
            `head.kind` pick the objective).
        resume: continue bit-for-bit from the latest `step-XXXXXXX/` in `train.out_dir`.
    """
    if os.environ.get("RANK", "0") != "0":  # DDP: the main process holds the folder
        return Trainer(cfg, resume).run()
    out = Path(cfg.train.out_dir)
    created, trainer = not out.exists(), None
    try:
        with folder_lock(out, "energytta-train", "set train.out_dir=NEW_FOLDER"):
            trainer = Trainer(cfg, resume)
            return trainer.run()
    finally:
        if created and trainer is None:  # a failed start: remove the folder it made, if empty
            with contextlib.suppress(OSError):
                out.rmdir()
