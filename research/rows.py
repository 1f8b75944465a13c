"""Rows of a report: captions generated with a checkpoint, scored, saved and reused.

A row is a JSON file holding a `key` (everything it was computed from, the checkpoint by
content) and its results; `saved` returns it only while the key is unchanged, so report
runs resume and rows can be computed in parallel processes. Used by `quality` and
`sampling_sweep`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from energytta.errors import UserError

EMBEDDERS = ("synth-classifier", "mel-stats")
CARD_KEY = "model_card"  # the safetensors metadata key of a shipped file's model card


def sha256(path: Path) -> str:
    """Hex digest of a file, or of a folder's files in name order. A safetensors file counts
    without its `model_card` metadata, so writing the card (which quotes these rows) does
    not make the rows it quotes stale."""
    h = hashlib.sha256()
    for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(_without_card(f.read_bytes()) if f.suffix == ".safetensors"
                 else f.read_bytes())
    return h.hexdigest()


def _without_card(data: bytes) -> bytes:
    """A safetensors file's bytes with `model_card` left out of its header's metadata
    (header: 8-byte little-endian length, then JSON; the tensors' bytes follow)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header.get("__metadata__", {}).pop(CARD_KEY, None)
    return json.dumps(header, sort_keys=True).encode() + data[8 + n:]


class MemoEmbedder:
    """Wraps an embedder so that identical audio (the reference clips, scored once per row)
    is embedded once per process."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.cache = inner, {}
        for attr in ("name", "sample_rate", "metric", "has_logits", "multilabel"):
            setattr(self, attr, getattr(inner, attr))

    def embed(self, wav: Any) -> Any:
        key = hashlib.sha1(wav.numpy().tobytes()).digest()
        if key not in self.cache:
            self.cache[key] = self.inner.embed(wav)
        return self.cache[key]

    def predict_type(self, wav: Any) -> str:
        return self.inner.predict_type(wav)


def score(generated: Path | str, reference: str, limit: int, embedders: dict,
          attributes_of: str | None = None) -> dict[str, Any]:
    """FD/KL/IS per embedder of `generated` vs `reference`, and attribute accuracy of the
    pairs of `generated` with `attributes_of` (default: `reference`)."""
    from energytta.eval import runner

    data = runner.collect(generated, reference).limit(limit)
    out = {"metrics": {n: runner.embedder_metrics(e, data, None) for n, e in embedders.items()}}
    pairs = data if attributes_of is None else runner.collect(generated, attributes_of).limit(limit)
    out["attributes"] = runner.attribute_accuracy(pairs, None, None, False,
                                                  embedders["synth-classifier"])
    # clips not paired with the reference by name (the real clips of another split) count all
    out["active"] = active_fraction([data.generated[s] for s in data.paired or data.generated])
    return out


def render_suffix(vocoder: str) -> str:
    """A row file's suffix for its renderer ("": the checkpoint's own default,
    "griffin-lim" or a trained vocoder file): "", "-gl" or "-voc"."""
    return "" if not vocoder else "-gl" if vocoder == "griffin-lim" else "-voc"


def render_key(vocoder: str) -> str:
    """A row key's record of a non-default renderer: Griffin-Lim by name, a trained
    vocoder file by its content (a retrained file makes the rows stale)."""
    return vocoder if vocoder == "griffin-lim" else sha256(Path(vocoder))


def active_fraction(paths: list[Path]) -> float:
    """Mean fraction of frames above -30 dBFS over the clips at `paths`: how eventful the
    audio a listener gets is (real clips are scored the same way)."""
    from energytta.audio.io import load_audio
    from energytta.eval.activity import waveform_active_fraction

    return float(sum(float(waveform_active_fraction(load_audio(p, 16000))) for p in paths)
                 / max(1, len(paths)))


def generate_row(args: argparse.Namespace, model: str, ckpt: Path, k: int, folder: Path,
                 vocoder: str | None = None, **knobs: float) -> dict[str, Any]:
    """Generate the first `args.limit` captions of `args.reference` into `folder`.

    Args:
        args: reference, limit, seed and batch_size of the report's command line.
        model: "teacher" or "student": what `ckpt` must hold (else UserError).
        ckpt: the checkpoint; k: decoding iterations; folder: where `<stem>.wav` go.
        vocoder: `TextToAudio.from_pretrained`'s vocoder (None: the checkpoint's
            `sample.vocoder`; "checkpoint", "griffin-lim", "trained" or a vocoder file).
        knobs: cfg=, temperature= override the checkpoint's sampling defaults.
    Returns:
        settings and timings (wall and process-CPU seconds per clip).
    """
    from energytta.audio.io import write_wav
    from energytta.data.manifest import read_manifest
    from energytta.eval.runner import by_stem
    from energytta.pipeline import TextToAudio

    items = list(by_stem(read_manifest(args.reference)).items())[:args.limit]
    pipe = TextToAudio.from_pretrained(ckpt, "cpu", vocoder=vocoder)
    if pipe.kind != model:
        raise UserError(f"--{model} {ckpt} holds a {pipe.kind}, not a {model}")
    s = pipe.settings(seed=args.seed, iterations=k, batch_size=args.batch_size, **knobs)
    pipe.text_encoder  # load outside the timed region
    wall, cpu = time.perf_counter(), time.process_time()
    result = pipe.generate([it.caption for _, it in items], s)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    folder.mkdir(parents=True, exist_ok=True)
    for (stem, _), wav in zip(items, result.wavs):
        write_wav(folder / f"{stem}.wav", wav, result.sample_rate)
    return {"clips": len(items), "duration": s.duration, "cfg": s.cfg,
            "temperature": s.temperature, "one_pass_cfg": s.one_pass_cfg,
            "vocoder": pipe.vocoder,
            "wall_s_per_clip": wall / len(items),
            "cpu_s_per_clip": cpu / len(items)}


def saved(path: Path, key: dict) -> dict[str, Any] | None:
    """The row saved at `path` if it was computed with exactly `key`, else None."""
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    return row if row.get("key") == key else None


def save(path: Path, row: dict[str, Any]) -> None:
    """Write a row atomically (a killed run never leaves half a row)."""
    from energytta.utils import atomic_write_text

    atomic_write_text(path, json.dumps(row, indent=1) + "\n")


def accuracy(result: dict, split: str, key: str = "overall") -> float | None:
    """Accuracy of check `key` on `split` ("all" | "seen" | "heldout"), None if absent."""
    a = (result.get("attributes") or {}).get(split, {}).get(key)
    return None if a is None else a["accuracy"]


def display_path(path: str) -> str:
    """A checkpoint path relative to the working directory when it is below it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path
