"""Evaluate generated audio against a reference manifest (what `energytta-eval` runs).

Pairing: a generated file `DIR/<stem>.wav` (or .flac) belongs to the reference item whose
audio file has the same stem (`audio/001800.wav` <-> `DIR/001800.wav`); its caption and
attributes are the prompt's. `--generated` may also be a manifest (reference vs reference
sanity checks); items are then matched by audio stem too.

Loading follows audioldm_eval: first channel, DC offset removed, resampled to the
embedder's rate, zero-padded to at least 2 s, and (our addition) cut to `max_seconds`.
FD/FAD use all files on both sides; KL, CLAP score and attribute accuracy use the pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from energytta.data.manifest import AUDIO_EXTENSIONS, Item, read_manifest
from energytta.errors import UserError
from energytta.eval import metrics
from energytta.eval.embedders import Embedder

MIN_SECONDS = 2.0  # audioldm_eval's pad_short_audio(min_samples=32000) at 16 kHz


def load_eval_wav(path: Path, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    """(S,) float32: first channel, mean removed, at `sample_rate`, >= 2 s, <= max_seconds."""
    from energytta.audio.io import load_audio

    wav = load_audio(path, sample_rate, mono=False)[0]
    wav = wav - wav.mean()
    if max_seconds:
        wav = wav[: int(round(max_seconds * sample_rate))]
    need = int(MIN_SECONDS * sample_rate)
    return np.pad(wav, (0, max(0, need - len(wav)))).astype(np.float32)


@dataclass
class EvalSet:
    """Reference and generated files keyed by stem, and the stems present in both."""

    reference: dict[str, Item]
    generated: dict[str, Path]
    paired: list[str]

    def limit(self, n: int) -> "EvalSet":
        """The first `n` reference items; generated files: their pairs, or (unpaired sets)
        the first `n`."""
        ref = dict(list(self.reference.items())[:n])
        if self.paired:
            gen = {s: p for s, p in self.generated.items() if s in ref}
        else:
            gen = dict(list(self.generated.items())[:n])
        return EvalSet(ref, gen, [s for s in self.paired if s in ref])


def by_stem(items: list[Item]) -> dict[str, Item]:
    """{audio file stem: item}, the first item of each file."""
    out: dict[str, Item] = {}
    for it in items:  # Clotho lists a file 5 times: keep its first caption
        out.setdefault(it.audio.stem, it)
    return out


def collect(generated: str | Path, reference: str | Path) -> EvalSet:
    """Match generated files to reference items by file stem (see module docstring).

    Raises:
        UserError: missing/empty inputs, generated files with no reference item, or no pair.
    """
    generated, ref_items = Path(generated), by_stem(read_manifest(reference))
    if generated.is_file():
        gen = {s: it.audio for s, it in by_stem(read_manifest(generated)).items()}
        return EvalSet(ref_items, gen, [s for s in gen if s in ref_items])
    if not generated.is_dir():
        raise UserError(f"--generated {generated}: no such folder or manifest")
    gen = {p.stem: p for p in sorted(generated.iterdir())
           if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")}
    if not gen:
        raise UserError(f"--generated {generated}: no .wav/.flac files in it")
    unmatched = [s for s in gen if s not in ref_items]
    if unmatched:
        example = next(iter(ref_items))
        raise UserError(f"--generated {generated}: {len(unmatched)} file(s) match no reference "
                        f"item (e.g. {unmatched[0]}); name each file after its reference "
                        f"audio's stem, e.g. {example}.wav")
    return EvalSet(ref_items, gen, list(gen))


def _embed_all(emb: Embedder, paths: list[Path], max_seconds: float | None, label: str,
               progress: Callable | None) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    feats, logits = [], []
    for i, p in enumerate(paths):
        e = emb.embed(torch.from_numpy(load_eval_wav(p, emb.sample_rate, max_seconds)))
        feats.append(e.features)
        logits.append(e.logits)
        if progress:
            progress(f"{emb.name}: {label}", i + 1, len(paths))
    return feats, logits


def embedder_metrics(emb: Embedder, data: EvalSet, max_seconds: float | None,
                     kid: bool = False, progress: Callable | None = None) -> dict[str, float]:
    """FD/FAD (+ KID), and with logits KL over pairs and IS of the generated set."""
    ref_stems, gen_stems = list(data.reference), list(data.generated)
    if min(len(ref_stems), len(gen_stems)) < 2:
        raise UserError(f"Fréchet distances need >= 2 files on each side, got "
                        f"{len(gen_stems)} generated and {len(ref_stems)} reference")
    rf, rl = _embed_all(emb, [data.reference[s].audio for s in ref_stems], max_seconds,
                        "reference", progress)
    gf, gl = _embed_all(emb, [data.generated[s] for s in gen_stems], max_seconds,
                        "generated", progress)
    ref_feats, gen_feats = np.concatenate(rf), np.concatenate(gf)
    out = {emb.metric: metrics.frechet_distance_features(gen_feats, ref_feats)}
    if kid:
        out["kid_mean"], out["kid_std"] = metrics.kernel_inception_distance(gen_feats, ref_feats)
    if emb.has_logits:
        gen_logits = np.stack(gl)
        if len(gen_logits) >= metrics.IS_SPLITS:
            out["is_mean"], out["is_std"] = metrics.inception_score(gen_logits)
        if data.paired:
            r = dict(zip(ref_stems, rl))
            g = dict(zip(gen_stems, gl))
            ref_p = np.stack([r[s] for s in data.paired])
            gen_p = np.stack([g[s] for s in data.paired])
            out["kl_softmax"] = metrics.kl_divergence(ref_p, gen_p, "softmax")
            if emb.multilabel:
                out["kl_sigmoid"] = metrics.kl_divergence(ref_p, gen_p, "sigmoid")
    return out


def clap_metrics(emb: Embedder, data: EvalSet, max_seconds: float | None,
                 progress: Callable | None = None) -> dict[str, float]:
    """CLAP score of the pairs (generated audio vs its reference caption)."""
    if not data.paired:
        return {}
    audio, _ = _embed_all(emb, [data.generated[s] for s in data.paired], max_seconds,
                          "generated", progress)
    text = emb.scorer.text_embeddings([data.reference[s].caption for s in data.paired])
    return {"clap_score": metrics.clap_score(text, np.concatenate(audio))}


def attribute_accuracy(data: EvalSet, max_seconds: float | None,
                       progress: Callable | None = None, strict: bool = False,
                       type_classifier: Any = None) -> dict[str, Any] | None:
    """Caption-attribute accuracy of the generated audio; None without synth attributes.

    Args:
        strict: also check omitted attributes against their default class
            (`detectors.check_clip(named_only=False)`).
        type_classifier: a `SynthClassifierEmbedder`; when given, every clip also gets a
            "type" check (the classifier's most likely type == the caption's type), which
            no analytic detector can make.
    """
    from energytta.eval.detectors import check_clip, summarize

    stems = [s for s in data.paired if "type" in data.reference[s].attributes]
    if not stems:
        return None
    checks, heldout = [], []
    for i, s in enumerate(stems):
        attrs = data.reference[s].attributes
        wav = load_eval_wav(data.generated[s], 16000, max_seconds)
        check = check_clip(wav, attrs, named_only=not strict)
        if type_classifier is not None:
            check["type"] = type_classifier.predict_type(torch.from_numpy(wav)) == attrs["type"]
        checks.append(check)
        heldout.append(bool(attrs.get("heldout", False)))
        if progress:
            progress("attributes", i + 1, len(stems))
    return summarize(checks, heldout)
