"""The latent cache: a manifest's audio encoded with the configured codec and its captions
with the text encoder, once, into safetensors shards that `CachedLatentDataset` reads
(`energytta-data cache`).

Output (DIR):
  codec.safetensors   codec buffers (mel mean/std) the latents were made with; fitted on
                      the first clips when the codec needs statistics and has none
  shard-00000.safetensors ...  per item j: latents.j (C,T,F) (whole clip), text.j (L,D)
                      and text_mask.j (L,) bool (unpadded); latents and text states are
                      float32, or float16 with `--dtype float16` (half the disk and page
                      cache; training reads them back as float32);
                      metadata {"captions": JSON list, "audio": JSON list}
  index.json          shards, dtype, settings (audio/codec/text config), frames/s, silence
                      frame (a cache without "dtype" is float32: the format before fp16)
Shard k holds the manifest's items [k·shard_size, (k+1)·shard_size) (bad rows and bad
files skipped with a warning), whoever encodes it, so `--workers N` processes (each with
its own codec and text encoder, on its own GPU when there are several) write the same
shards as one process, and the index is written once, after the last shard.
Resumable: finished shards are kept (each is written atomically; Ctrl-C exits with 130 and
a rerun continues, with any number of workers); a run on a folder made with other
settings, dtype or manifest stops with an error; a second run into a folder another one
is writing is refused (its lock).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from energytta.config import Config
from energytta.data.dataset import CACHE_DTYPES, CODEC_FILE, INDEX_FILE, cache_settings
from energytta.data.manifest import MIN_AUDIO_SECONDS, Item, Manifest, open_manifest
from energytta.errors import UserError
from energytta.locks import folder_lock
from energytta.utils import atomic_path, atomic_write_text, pick_device

FIT_CLIPS = 64  # clips used to fit codec statistics (the first ones of the manifest)
PLAN_FILE = "plan.json"


def manifest_items(manifest: Manifest, start: int, stop: int) -> list[Item]:
    """Items [start, stop) of the manifest; a bad row is warned about and skipped."""
    out = []
    for i in range(start, min(stop, len(manifest))):
        try:
            out.append(manifest[i])
        except UserError as e:
            warnings.warn(f"skipping a bad manifest row: {e}")
    return out


def _load_wavs(items: list[Item], sample_rate: int) -> list[tuple[int, torch.Tensor]]:
    """(position in `items`, wav (S,)) for each readable item; bad files (unreadable, or
    shorter than MIN_AUDIO_SECONDS, as `energytta-data check` lists them) are warned
    about."""
    from energytta.audio.io import load_audio

    out = []
    for k, item in enumerate(items):
        try:
            wav = load_audio(item.audio, sample_rate)
        except UserError as e:
            warnings.warn(f"skipping {item.audio}: {e}")
            continue
        if len(wav) < MIN_AUDIO_SECONDS * sample_rate:
            warnings.warn(f"skipping {item.audio}: too short ({len(wav)} samples; under "
                          f"{MIN_AUDIO_SECONDS:g} s)")
            continue
        out.append((k, torch.from_numpy(wav)))
    return out


@torch.no_grad()
def _encode_wavs(codec: Any, wavs: list[torch.Tensor], device: torch.device,
                 batch_size: int) -> list[torch.Tensor]:
    """Whole clips -> latents (C, T_i, F); a batch is zero-padded, then each item is cut
    back to its own frame count (the padding never leaks into a clip's latents)."""
    out = []
    for i in range(0, len(wavs), batch_size):
        chunk = [codec.prepare_clip(w) for w in wavs[i:i + batch_size]]  # before padding
        length = max(w.shape[0] for w in chunk)
        batch = torch.stack([torch.nn.functional.pad(w, (0, length - w.shape[0]))
                             for w in chunk]).to(device)
        lat = codec.encode(batch).float().cpu()  # (B, C, T, F)
        for w, z in zip(chunk, lat):
            out.append(z[:, :codec.latent_frames(w.shape[0] / codec.sample_rate)].contiguous())
    return out


def _prepare_codec(cfg: Config, out: Path, items: Manifest, device: torch.device) -> Any:
    """The configured codec, with statistics loaded from `out` or fitted and saved there."""
    from safetensors.torch import load_file, save_file

    from energytta.audio.codec import build_codec

    codec = build_codec(cfg).to(device).eval()
    if (out / CODEC_FILE).is_file():
        codec.load_state_dict(load_file(str(out / CODEC_FILE)), strict=True)
        return codec
    if hasattr(codec, "fit_stats") and not getattr(codec, "is_fitted", True):
        wavs = [w for _, w in _load_wavs(manifest_items(items, 0, FIT_CLIPS),
                                         codec.sample_rate)]
        if not wavs:
            raise UserError(f"none of the first {min(len(items), FIT_CLIPS)} clips is readable "
                            f"and at least {MIN_AUDIO_SECONDS:g} s long, to fit codec "
                            "statistics on; `energytta-data check` lists the bad files")
        codec.fit_stats([torch.stack([w]).to(device) for w in wavs])
    state = {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
    with atomic_path(out / CODEC_FILE) as tmp:
        save_file(state, str(tmp))
    return codec


def _shard_done(path: Path) -> bool:
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return "captions" in (f.metadata() or {})
    except Exception:  # a truncated file from another tool: redo it
        return False


def _stored(x: torch.Tensor, dtype: str, what: str) -> torch.Tensor:
    """`x` in the cache's dtype; a value float16 cannot hold is an error, never an inf."""
    if dtype == "float32":
        return x
    half = x.to(torch.float16)
    if not torch.isfinite(half).all():
        raise UserError(f"{what} holds values beyond float16's range (max |x| = "
                        f"{float(x.abs().max()):.4g}); cache with --dtype float32")
    return half


def _write_shard(path: Path, items: list[Item], codec: Any, text_encoder: Any,
                 device: torch.device, batch_size: int, dtype: str = "float32") -> int:
    """Encode and save one shard (tensors in `dtype`); returns the number of items stored."""
    from safetensors.torch import save_file

    good = _load_wavs(items, codec.sample_rate)
    latents = _encode_wavs(codec, [w for _, w in good], device, batch_size)
    captions = [items[k].caption for k, _ in good]
    tensors: dict[str, torch.Tensor] = {}
    for i in range(0, len(captions), batch_size):
        states, mask = text_encoder(captions[i:i + batch_size])  # (b, L, D), (b, L)
        for j, (s, m) in enumerate(zip(states.cpu(), mask.cpu()), start=i):
            n = int(m.sum())
            tensors[f"text.{j}"] = _stored(s[:n].contiguous(), dtype,
                                           f"the text states of '{captions[j]}'")
            tensors[f"text_mask.{j}"] = m[:n].contiguous()
    for j, z in enumerate(latents):
        tensors[f"latents.{j}"] = _stored(z, dtype, f"the latents of {items[good[j][0]].audio}")
    meta = {"captions": json.dumps(captions),
            "audio": json.dumps([str(items[k].audio) for k, _ in good])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return len(captions)


def _plan(cfg: Config, manifest: Path, items: Manifest, shard_size: int,
          dtype: str) -> dict[str, Any]:
    plan = {"manifest": str(manifest.resolve()), "num_items": len(items),
            "shard_size": shard_size, "settings": cache_settings(cfg)}
    if dtype != "float32":  # plans of float32 caches read as before (they stay resumable)
        plan["dtype"] = dtype
    return plan


def _check_plan(out: Path, plan: dict[str, Any]) -> None:
    """Refuse to mix two different caches in one folder; record the plan otherwise."""
    path = out / PLAN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != plan:
            raise UserError(f"{out} holds a cache made from another manifest, config or "
                            "dtype; use a new --out or delete the folder")
        return
    atomic_write_text(path, json.dumps(plan, indent=1, sort_keys=True))


def _silence_frame(codec: Any, device: torch.device) -> list:
    """Latent of one frame of digital silence (C, F): the padding value for short items."""
    with torch.no_grad():
        wav = torch.zeros(1, int(codec.sample_rate), device=device)
        return codec.encode(wav)[0, :, 0].float().cpu().tolist()


def cache(cfg: Config, manifest: str, out: str, batch_size: int = 16, shard_size: int = 256,
          audio_dir: str | None = None, device: str = "auto", progress: bool = True,
          dtype: str = "float32", workers: int = 1) -> Path:
    """Build (or finish) the latent cache of `manifest` in `out`.

    Args:
        cfg: audio, codec and text settings (what a training run on the cache must match).
        manifest: JSONL / AudioCaps / Clotho manifest; audio_dir: its audio (CSV manifests).
        out: cache folder (created); finished shards found there are kept.
        batch_size: clips per encoder pass; shard_size: items per shard file.
        device: "auto", "cpu", "cuda", ...; progress: show a progress bar.
        dtype: "float32" or "float16": how latents and text states are stored.
        workers: processes encoding shards in parallel (each on its own GPU when the
            device is CUDA and there are several).
    Returns:
        the path of the index.json written.
    """
    from energytta.text import build_text_encoder

    if batch_size < 1 or shard_size < 1:
        raise UserError("--batch-size and --shard-size must be >= 1")
    if dtype not in CACHE_DTYPES:
        raise UserError(f"--dtype must be {' or '.join(CACHE_DTYPES)}, got {dtype!r}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    out_dir, dev = Path(out), pick_device(device)
    items = open_manifest(manifest, audio_dir)
    # one writer per cache folder; taking the lock also sweeps a killed run's temporaries
    with folder_lock(out_dir, "energytta-data cache", "pass another --out"):
        _check_plan(out_dir, _plan(cfg, Path(manifest), items, shard_size, dtype))
        codec = _prepare_codec(cfg, out_dir, items, dev)
        text_encoder = build_text_encoder(cfg.text).to(dev)
        job = ShardJob(cfg, out_dir, items, batch_size, shard_size, dtype)
        if workers == 1:
            shards = _write_shards(job, codec, text_encoder, dev, progress)
        else:
            from energytta.data.cache_workers import write_shards_parallel
            shards = write_shards_parallel(job, workers, dev, progress)
        index = {"version": 1, "num_items": sum(s["count"] for s in shards),
                 "shards": shards, "dtype": dtype, "settings": cache_settings(cfg),
                 "frames_per_second": codec.frames_per_second,
                 "latent_channels": codec.latent_channels, "latent_freq": codec.latent_freq,
                 "text_dim": text_encoder.dim, "silence_frame": _silence_frame(codec, dev),
                 "manifest": str(Path(manifest).resolve())}
        atomic_write_text(out_dir / INDEX_FILE, json.dumps(index, indent=1))
    return out_dir / INDEX_FILE


class ShardJob:
    """What every shard of one cache needs besides the models: where the items come from,
    where shards go and how they are cut and stored (picklable, for worker processes)."""

    def __init__(self, cfg: Config, out_dir: Path, items: Manifest, batch_size: int,
                 shard_size: int, dtype: str) -> None:
        self.cfg, self.out_dir, self.items = cfg, out_dir, items
        self.batch_size, self.shard_size, self.dtype = batch_size, shard_size, dtype

    @property
    def num_shards(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def path(self, k: int) -> Path:
        return self.out_dir / f"shard-{k:05d}.safetensors"

    def size(self, k: int) -> int:
        """Manifest items planned for shard k (bad ones are skipped when it is written)."""
        return min(self.shard_size, len(self.items) - k * self.shard_size)

    def write(self, k: int, codec: Any, text_encoder: Any, dev: torch.device) -> int:
        """Encode shard k unless a finished one is there; returns its item count."""
        path = self.path(k)
        if not _shard_done(path):
            start = k * self.shard_size
            chunk = manifest_items(self.items, start, start + self.shard_size)
            _write_shard(path, chunk, codec, text_encoder, dev, self.batch_size, self.dtype)
        return _shard_count(path)


def _write_shards(job: ShardJob, codec: Any, text_encoder: Any, dev: torch.device,
                  progress: bool) -> list[dict[str, Any]]:
    """Encode every shard not yet finished (a rerun continues) -> the index's shard list."""
    from rich.progress import Progress

    shards = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("caching latents", total=len(job.items))
        for k in range(job.num_shards):
            shards.append({"file": job.path(k).name,
                           "count": job.write(k, codec, text_encoder, dev)})
            bar.advance(task, job.size(k))
    return shards


def _shard_count(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return len(json.loads(f.metadata()["captions"]))
