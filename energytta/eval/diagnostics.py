"""Does the backbone hear time? Cheap diagnostics for training runs and checkpoints.

Our first shipped teacher read its visible tokens as a *bag*: moving them to other
positions left its predictions unchanged, so generated events came out as scattered
stripes. These numbers tell within minutes of training whether a recipe fixes that:

- **shuffle gap**: the head's error on masked tokens with the visible tokens at their
  true positions vs the same visible tokens permuted among the visible positions (same
  mask, same noise, same text). Teacher: x̂_0 MSE at fixed high-noise timesteps (where
  x_t says little and the backbone must say what is there); student: its energy score.
  Positive = the model uses where its context is.
- **positional spread**: with half of a clip visible, how much the backbone's features
  at masked positions vary along the clip (std over positions, the learned head-position
  embedding removed), next to how much they vary between clips.
- **generation check**: sound type, every named caption attribute and counts of clips
  generated at K iterations, scored by the shipped synth-classifier on the decoded mel
  (no vocoder), as research/reports/quality.md scores full runs.

`validate_tta` is the training loop's validation hook for teacher and student;
`python -m energytta.eval.diagnostics --ckpt PATH` gives the same numbers for any
checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from energytta.errors import UserError
from energytta.masking import ratio_mask

# teacher: high-noise training timesteps where x_t hides the token's content. They are
# indices, not noise levels: under head.schedule_shift the same t is noisier, so compare
# shifted and unshifted teachers by the gap's sign and the generation check, not its size.
PROBE_TIMESTEPS = (900, 975)
PROBE_MASKED = 0.7  # masked fraction for the shuffle gap (MAR's lowest training ratio)
SPREAD_MASKED = 0.5  # masked fraction for the positional spread: half the clip as context


def _seeded(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def shuffle_visible(tokens: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    """Permute each row's visible tokens among its visible positions.

    Args:
        tokens: (B, N, d); mask: (B, N) bool, True = masked (left in place).
    Returns (B, N, d): same content, same masked set, the context moved in time.
    """
    out = tokens.clone()
    for b in range(tokens.shape[0]):
        vis = (~mask[b]).nonzero().squeeze(1)  # (V,)
        perm = torch.randperm(vis.numel(), generator=generator, device=generator.device)
        out[b, vis] = tokens[b, vis[perm.to(vis.device)]]
    return out


def head_error(head: nn.Module, z: Tensor, tokens: Tensor, mask: Tensor, seed: int) -> Tensor:
    """The head's error on the masked tokens, with a fixed seed for its noise.

    Heads with `probe_error` (the diffusion teacher) are scored at PROBE_TIMESTEPS;
    others (the energy student) by their training loss.
    """
    if hasattr(head, "probe_error"):
        errs = [head.probe_error(z, tokens, mask, _seeded(z.device, seed + t), t)
                for t in PROBE_TIMESTEPS]
        return torch.stack(errs).mean()
    return head.loss(z, tokens, mask, generator=_seeded(z.device, seed))


@torch.no_grad()
def shuffle_gap(model: nn.Module, tokens: Tensor, text: Tensor, text_mask: Tensor,
                seed: int) -> dict[str, float]:
    """Head error with true vs shuffled context positions for one batch.

    Args:
        model: TTAModel (`.backbone`, `.head`), eval mode.
        tokens: (B, N, d) clean tokens; text: (B, L, Dt); text_mask: (B, L) bool.
        seed: fixes the mask, the shuffle and the head's noise (paired comparison).
    Returns {"probe_true", "probe_shuffled", "shuffle_gap"} (gap = shuffled − true).
    """
    B, N, _ = tokens.shape
    g = _seeded(tokens.device, seed)
    mask = ratio_mask(B, N, PROBE_MASKED, g, tokens.device)
    moved = shuffle_visible(tokens, mask, g)
    err = {}
    for name, tok in (("true", tokens), ("shuffled", moved)):
        z = model.backbone(tok, mask, text, text_mask)
        err[name] = float(head_error(model.head, z, tokens, mask, seed + 1))
    return {"probe_true": err["true"], "probe_shuffled": err["shuffled"],
            "shuffle_gap": err["shuffled"] - err["true"]}


@torch.no_grad()
def positional_spread(model: nn.Module, tokens: Tensor, text: Tensor, text_mask: Tensor,
                      seed: int) -> dict[str, float]:
    """How much backbone features at masked positions vary along a clip vs across clips.

    Half the clip is visible (SPREAD_MASKED). The learned `diffusion_pos` (a constant per
    position, the same for every clip) is subtracted, so only what the backbone computes
    from the context counts.
    Returns {"pos_spread": mean over clips of the std over masked positions,
    "clip_spread": std over clips of the clip-mean feature} (both averaged over channels).
    """
    B, N, _ = tokens.shape
    mask = ratio_mask(B, N, SPREAD_MASKED, _seeded(tokens.device, seed), tokens.device)
    z = model.backbone(tokens, mask, text, text_mask)
    pos = getattr(model.backbone, "diffusion_pos", None)
    if pos is not None:
        z = z - pos[:, :N].to(z.dtype)
    per_clip = []
    for b in range(B):
        zm = z[b, mask[b]]  # (M, D)
        per_clip.append(zm.std(0, unbiased=False).mean() if zm.shape[0] > 1 else z.new_zeros(()))
    clip_means = torch.stack([z[b, mask[b]].mean(0) for b in range(B)])  # (B, D)
    clip = clip_means.std(0, unbiased=False).mean() if B > 1 else z.new_zeros(())
    return {"pos_spread": float(torch.stack(per_clip).mean()), "clip_spread": float(clip)}


# ------------------------------------------------------------------ generation check
_CLASSIFIER: dict[str, Any] = {}


def _classifier() -> nn.Module:
    """The shipped synth-classifier, loaded once per process."""
    if "model" not in _CLASSIFIER:
        from energytta.eval.classifier import load_classifier
        _CLASSIFIER["model"] = load_classifier()[0]
    return _CLASSIFIER["model"]


def score_mels(mels: Tensor, attributes: list[dict[str, Any]]) -> dict[str, float]:
    """Classifier checks of log-mels (B, 64, T) against each clip's named attributes.

    Returns accuracies: `type` (sound type), `attributes` (every named attribute the
    classifier has a head for and that applies to the clip's type, type included) and
    `count` (clips whose caption names a count); NaN where nothing was checked.
    """
    from energytta.eval.classifier import LABELS, applies

    clf = _classifier().to(mels.device)
    logits = clf.forward_mel(mels.float())["logits"]
    pred = {k: v.argmax(-1).tolist() for k, v in logits.items()}
    hits: dict[str, list[bool]] = {"type": [], "attributes": [], "count": []}
    for i, attrs in enumerate(attributes):
        for head, vocab in LABELS.items():
            if head not in attrs or not applies(head, attrs) or attrs[head] not in vocab:
                continue
            ok = vocab[pred[head][i]] == attrs[head]
            hits["attributes"].append(ok)
            if head in ("type", "count"):
                hits[head].append(ok)
    return {k: (sum(v) / len(v) if v else float("nan")) for k, v in hits.items()}


@torch.no_grad()
def generation_check(cfg: Any, model: nn.Module, codec: nn.Module, text_fn: Any,
                     items: list[Any], iterations: int, seed: int,
                     real: Tensor | None = None) -> dict[str, float]:
    """Generate one clip per item's caption and score its decoded mel.

    Args:
        cfg: the run's Config (`sample.*` gives CFG, schedule, temperature, duration).
        model: TTAModel in eval mode; codec: its codec (decode -> log-mel).
        text_fn: captions -> (states (B, L, Dt), mask (B, L)) on the model's device.
        items: manifest Items with `caption` and `attributes`.
        iterations: decoding iterations K.
        seed: generator seed (same seed, same clips).
        real: the items' real latents (B, C, T, F), or None.
    Returns {"gen_type", "gen_attributes", "gen_count"} accuracies and how eventful the
    clips are (`energytta.eval.activity`): "gen_active" (mean active fraction) and
    "gen_events" (mean events per clip), with "real_active" / "real_events" of the same
    captions' real clips when `real` is given.
    """
    from energytta.sampling import DecodeSettings, decode

    if cfg.audio.n_mels != 64 or cfg.audio.sample_rate != 16000:
        return {}  # the classifier reads the 16 kHz, 64-bin AudioLDM mel only
    s = cfg.sample
    text, mask = text_fn([it.caption for it in items])
    seconds = min(s.duration, cfg.audio.max_seconds)
    g = _seeded(text.device, seed)
    how = DecodeSettings.of(s, iterations=iterations, one_pass=None)
    tokens = decode(model.backbone, model.head, text, mask, model.tokens_for(seconds), how,
                    generator=g)  # (B, N, d)
    mel = codec.decode(model.geometry.unpatchify(tokens))  # (B, 64, T)
    acc = score_mels(mel, [dict(it.attributes) for it in items])
    out = {f"gen_{k}": v for k, v in acc.items()}
    out.update(_activity("gen", mel, cfg, model))
    if real is not None:
        out.update(_activity("real", codec.decode(real), cfg, model))
    return out


def _activity(prefix: str, mel: Tensor, cfg: Any, model: nn.Module) -> dict[str, float]:
    """Mean active fraction and events per clip of log-mels (B, M, T)."""
    from energytta.eval.activity import activity, reference_db

    fps = cfg.audio.sample_rate / cfg.audio.hop_length
    active, events = activity(mel, reference_db(cfg.audio), fps)
    return {f"{prefix}_active": float(active.mean()), f"{prefix}_events": float(events.mean())}


# ------------------------------------------------------------------ the hook
def _weighted_mean(rows: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    total = sum(n for n, _ in rows)
    keys = rows[0][1].keys() if rows else []
    return {k: sum(n * r[k] for n, r in rows) / total for k in keys}


@torch.no_grad()
def validate_tta(cfg: Any, model: nn.Module, ctx: Any) -> dict[str, float]:
    """Shuffle gap, positional spread and the generation check on the validation batches.

    Args:
        cfg: the run's Config (`train.val_generate` captions at `train.val_iterations`).
        model: TTAModel (the EMA weights), eval mode.
        ctx: the loop's validation context: `.batches` (dicts with latents (B,C,T,F),
            text, text_mask), `.items` (manifest Items or None), `.codec`, `.text`.
    Returns the numbers, each batch weighted by its size; fixed seeds, so the same
    weights give the same numbers at every step and after a resume.
    """
    rows = []
    for i, batch in enumerate(ctx.batches):
        tokens = model.geometry.patchify(batch["latents"])
        text, tmask = batch["text"], batch["text_mask"]
        r = shuffle_gap(model, tokens, text, tmask, seed=1000 * i)
        r.update(positional_spread(model, tokens, text, tmask, seed=1000 * i + 7))
        rows.append((tokens.shape[0], r))
    out = _weighted_mean(rows)
    n = cfg.train.val_generate
    # each caption with its own real clip (batches carry their items), for the activity
    pairs = [(it, lat) for b in ctx.batches
             for it, lat in zip(b.get("items") or [], b["latents"]) if it.attributes]
    pairs = pairs or [(it, None) for it in (ctx.items or []) if it.attributes]
    if n > 0 and pairs:
        items, real = zip(*pairs[:n])
        out.update(generation_check(
            cfg, model, ctx.codec, ctx.text, list(items), cfg.train.val_iterations,
            seed=cfg.train.seed, real=None if real[0] is None else torch.stack(real)))
    return out


# ------------------------------------------------------------------ command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m energytta.eval.diagnostics",
        description="Does a checkpoint hear time? Shuffle gap, positional spread and a fast "
                    "generation check (classifier on the decoded mel) on a validation "
                    "manifest; the numbers the training loop logs as val/*.")
    p.add_argument("--ckpt", required=True, help="inference .safetensors, run or step folder, "
                   "or a shipped model's name (student, teacher)")
    p.add_argument("--data", default="", help="validation manifest (default: the "
                   "checkpoint config's data.val)")
    p.add_argument("--batches", type=int, default=None,
                   help="batches for gap and spread (default: the config's train.val_batches)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="clips per batch (default: the config's data.batch_size)")
    p.add_argument("--generate", type=int, default=32, help="captions for the generation "
                   "check (0 = skip)")
    p.add_argument("--iterations", type=int, default=16, help="decoding iterations K")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale of the generation "
                   "check (default: the checkpoint's sample.cfg)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: the checkpoint's sample.temperature)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="", help="also write the numbers to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batches", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.iterations < 1:
        raise UserError("--iterations must be >= 1")
    if args.generate < 0:
        raise UserError("--generate must be >= 0")
    for name in ("cfg", "temperature"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and 0 <= value <= 100):
            raise UserError(f"--{name} must be a finite number in [0, 100], got {value}")
    out = diagnose(args.ckpt, data=args.data, batches=args.batches, batch_size=args.batch_size,
                   generate=args.generate, iterations=args.iterations, cfg_scale=args.cfg,
                   temperature=args.temperature, device=args.device)
    line = json.dumps(out, sort_keys=True)
    print(line)
    if args.json:
        from energytta.utils import atomic_write_text
        atomic_write_text(Path(args.json), line + "\n")
    return 0


def diagnose(ckpt: str, data: str = "", batches: int | None = None,
             batch_size: int | None = None, generate: int = 32, iterations: int = 16,
             cfg_scale: float | None = None, temperature: float | None = None,
             device: str = "cpu") -> dict[str, float]:
    """`validate_tta` for a checkpoint, on validation batches built as the training loop's
    validation stage builds them (first batches in file order, eval crops, captions
    encoded one at a time), so a run's last `val/*` row is reproduced from its export.

    Args:
        ckpt: inference file, run or step folder, or a shipped model's name.
        data: validation manifest ("" = the checkpoint config's data.val).
        batches, batch_size: None = the config's train.val_batches, data.batch_size.
        generate, iterations: the generation check's captions (0 = skip) and K.
        cfg_scale, temperature: None = the checkpoint's sampling settings.
        device: where to run.
    """
    from energytta.checkpoint import load_model, resolve_checkpoint
    from energytta.data.dataset import build_dataset, collate
    from energytta.text import TextCache, build_text_encoder
    from energytta.train.objectives.base import ValContext
    from energytta.train.stream import first_batches

    cfg, _kind, model, codec = load_model(resolve_checkpoint(ckpt), device)
    cfg.data.val = data or cfg.data.val
    cfg.data.kind = "audio"  # the checks read the clips (a caption-only model trained without)
    cfg.train.val_generate, cfg.train.val_iterations = generate, iterations
    if cfg_scale is not None:
        cfg.sample.cfg = cfg_scale
    if temperature is not None:
        cfg.sample.temperature = temperature
    text = TextCache(build_text_encoder(cfg.text).to(device).eval())
    dataset = build_dataset(cfg, "val")
    items = getattr(dataset, "items", None)
    rows = []
    for idx, batch in first_batches(dataset, collate, batch_size or cfg.data.batch_size,
                                    batches or cfg.train.val_batches):
        rows.append({**_model_inputs(model, codec, text, batch, device),
                     "captions": batch["captions"],
                     "items": [items[i] for i in idx] if items is not None else None})
    if not rows:
        raise UserError(f"{cfg.data.val}: no validation clips")
    read = sum(len(r["captions"]) for r in rows)
    if generate > read:  # the captions come from the clips read for the gap
        raise UserError(f"--generate {generate} exceeds the {read} validation clips read; "
                        "raise --batches (or --batch-size) to read at least that many")
    ctx = ValContext(cfg, rows, codec, text, torch.device(device),
                     torch.Generator(device=device))
    return validate_tta(cfg, model, ctx)


@torch.no_grad()
def _model_inputs(model: nn.Module, codec: nn.Module, text: Any, batch: dict[str, Any],
                  device: str) -> dict[str, Tensor]:
    """A collated batch -> {latents cropped to whole time patches, text, text_mask}, as the
    text-to-audio objectives' `inputs` make them."""
    if "latents" in batch:
        lat, states, mask = (batch[k].to(device) for k in ("latents", "text", "text_mask"))
    else:
        lat = codec.encode(batch["wav"].to(device))
        states, mask = text(batch["captions"])
    return {"latents": model.geometry.crop(lat), "text": states, "text_mask": mask}


if __name__ == "__main__":
    from energytta.errors import run_cli
    raise SystemExit(run_cli(main, __import__("sys").argv[1:]))
