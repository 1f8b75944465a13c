"""Tar shards (webdataset) as a training source: what stable-audio-tools and audiocraft
users bring, streamed instead of indexed.

A shard is a tar holding, per clip, `KEY.wav` (or `.flac`, `.ogg`, `.mp3`) and `KEY.json`
whose `"text"` or `"caption"` is the caption (a `KEY.txt` caption works too). `data.train`
names shards as

- a brace pattern `path/shard-{000000..000099}.tar` (or a glob `path/*.tar`),
- a folder of `.tar` files (one without a latent cache's index.json), or
- a list file (`.txt`), one shard path per line (relative to the list's folder).

Each clip is decoded, made mono, resampled, passed through the codec's per-clip transform
and cropped exactly as a manifest's clip is (`AudioCaptionDataset`). The stream of an
epoch: shards shuffled by (train.seed, epoch), split over processes (every world-th
shard from the rank's own, as `wds.split_by_node`) and over DataLoader workers
(`wds.split_by_worker`), samples shuffled in a `SHUFFLE_BUFFER` seeded by (train.seed,
epoch, rank, worker). `energytta.train.shard_stream` turns it into batches and states what
`--resume` does (an iterable source cannot seek). `write_shards` writes shards from a
manifest (`energytta-data shards`).
"""
from __future__ import annotations

import copy
import glob
import hashlib
import itertools
import json
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from energytta.config import AudioConfig, Config
from energytta.errors import UserError

SHARD_SUFFIX = ".tar"
LIST_SUFFIX = ".txt"
AUDIO_KEYS = ("wav", "flac", "ogg", "mp3")
CAPTION_KEYS = ("text", "caption")  # in KEY.json, first found wins
# samples held for shuffling per worker (raw bytes: about 0.3 MB per 10-s 16-bit mono wav)
SHUFFLE_BUFFER = 512
SHUFFLE_INITIAL = 128


# ------------------------------------------------------------------ naming shards
def _is_pattern(source: str) -> bool:
    return not Path(source).expanduser().exists() and any(c in source for c in "{*?[")


def is_shard_source(source: str) -> bool:
    """Whether `source` (a `data.*` value) names tar shards rather than a manifest or a
    latent cache."""
    if _is_pattern(source):
        return SHARD_SUFFIX in source
    path = Path(source).expanduser()
    if path.is_dir():
        return not (path / "index.json").exists() and any(path.glob(f"*{SHARD_SUFFIX}"))
    return path.suffix.lower() in (SHARD_SUFFIX, LIST_SUFFIX)


def _expand(pattern: str) -> list[str]:
    """Brace ranges first (webdataset's `{000000..000099}`), then globs, in order."""
    from braceexpand import braceexpand

    out = []
    for p in braceexpand(pattern):
        out += sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    return out


def shard_urls(source: str, flag: str) -> list[str]:
    """The shard files `source` names, in order; every one must exist.

    Args:
        source: a pattern, a folder of .tar, a .tar or a list file (module docstring).
        flag: the config key that named it (for messages), e.g. "data.train".
    """
    path = Path(source).expanduser()
    if _is_pattern(source):
        urls = _expand(str(path))
        if not any(Path(u).is_file() for u in urls):
            raise UserError(f"{flag}={source}: the shard pattern matches no file; check the "
                            "folder and the {000000..000099} range")
    elif path.is_dir():
        urls = sorted(str(p) for p in path.glob(f"*{SHARD_SUFFIX}"))
    elif path.suffix.lower() == LIST_SUFFIX:
        if not path.is_file():
            raise UserError(f"{flag}={source}: shard list not found (a .txt naming one .tar "
                            "per line)")
        lines = path.read_text(encoding="utf-8").splitlines()
        urls = [str(_relative(line.strip(), path.parent)) for line in lines if line.strip()]
        if not urls:
            raise UserError(f"{flag}={source}: the shard list is empty; write one .tar path "
                            "per line")
    else:
        urls = [str(path)]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise UserError(f"{flag}={source}: {len(missing)} of {len(urls)} shard(s) not found "
                        f"(first: {missing[0]}); fix the name or range, or write them with "
                        "`energytta-data shards`")
    return urls


def _relative(line: str, base: Path) -> Path:
    p = Path(line).expanduser()
    return p if p.is_absolute() else base / p


# ------------------------------------------------------------------ reading samples
def _read_shard(url: str) -> Iterator[dict[str, Any]]:
    """The samples ({"__key__", "wav": bytes, "json": bytes, ...}) of one tar."""
    import webdataset as wds

    try:
        yield from wds.tarfile_to_samples()(iter([{"url": url}]))
    except Exception as e:  # tarfile / gzip / OS errors of a damaged or foreign file
        reason = (str(e.args[0]) if e.args else type(e).__name__).split(" @ ")[0]
        raise UserError(f"{url}: not a readable tar shard ({reason}); re-write it "
                        "(energytta-data shards) or drop it from data.train") from None


def caption_of(sample: dict[str, Any], where: str) -> str:
    """The sample's caption: KEY.json's "text" / "caption" (a string, or the first of a
    list), else KEY.txt; a sample without one is a UserError."""
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{where}.json is not valid JSON; re-write the shard") from None
        for key in CAPTION_KEYS:
            value = meta.get(key) if isinstance(meta, dict) else None
            value = value[0] if isinstance(value, list) and value else value
            if isinstance(value, str) and value.strip():
                return value.strip()
    if "txt" in sample and sample["txt"].decode("utf-8", "replace").strip():
        return sample["txt"].decode("utf-8", "replace").strip()
    raise UserError(f"{where} has no caption: each clip needs a KEY.json with \"text\" or "
                    "\"caption\" (as stable-audio-tools and audiocraft write) or a KEY.txt; "
                    "add captions to the shard")


def _key_seed(url: str, key: str) -> int:
    """A stable integer for a clip (its crop generator): the same in every process."""
    digest = hashlib.blake2b(f"{Path(url).name}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ShardDataset(IterableDataset):
    """(wav, caption) items streamed from tar shards.

    Args:
        urls: shard files (`shard_urls`).
        audio_cfg: sample rate of the returned waveforms.
        crop_seconds: every clip is cropped / zero-padded to this length.
        train: shuffled shards and samples, random crops; otherwise file order and start
            crops.
        seed: `train.seed`.
        transform: the codec's `clip_transform` (None = none), applied before the crop.
    """

    def __init__(self, urls: list[str], audio_cfg: AudioConfig, crop_seconds: float,
                 train: bool, seed: int = 0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not urls:
            raise UserError("the shard source names no shard")
        if crop_seconds <= 0:
            raise UserError(f"audio.crop_seconds must be > 0, got {crop_seconds}")
        self.urls, self.train, self.seed, self.transform = list(urls), train, seed, transform
        self.sample_rate = audio_cfg.sample_rate
        self.length = int(round(crop_seconds * audio_cfg.sample_rate))
        self.epoch, self.salt, self.rank, self.world = 0, (), 0, 1

    @classmethod
    def from_config(cls, cfg: Config, source: str, split: str) -> "ShardDataset":
        from energytta.audio.codec import clip_transform

        return cls(shard_urls(source, f"data.{split}"), cfg.audio, cfg.audio.crop_seconds,
                   train=split == "train", seed=cfg.train.seed, transform=clip_transform(cfg))

    def set_epoch(self, epoch: int, salt: tuple[int, ...] = ()) -> None:
        """The epoch to stream; a non-empty `salt` re-seeds its shuffles (a resume)."""
        self.epoch, self.salt = epoch, tuple(salt)

    def set_rank(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def shards(self) -> list[str]:
        """This process's shards of the epoch: all shuffled by (seed, epoch, salt), then
        every world-th from the rank's own (`wds.split_by_node`'s split, with the run's
        rank rather than the environment's)."""
        urls = list(self.urls)
        if self.train:
            from energytta.train.seeds import derive_seed
            random.Random(derive_seed(self.seed, self.epoch, *self.salt)).shuffle(urls)
        return urls[self.rank::self.world]

    def _raw(self) -> Iterator[dict[str, Any]]:
        """This worker's raw samples, shuffled in a seeded buffer when training."""
        import webdataset as wds

        from energytta.train.seeds import derive_seed

        urls = list(wds.split_by_worker(self.shards()))
        raw = itertools.chain.from_iterable(_read_shard(u) for u in urls)
        if not self.train:
            return raw
        info = get_worker_info()
        rng = random.Random(derive_seed(self.seed, self.epoch, self.rank,
                                        info.id if info else 0, *self.salt))
        return wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_INITIAL, rng=rng)(raw)

    def _decode(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        """A raw sample -> {"wav": (S,) float32, "caption"}; None for undecodable audio
        (skipped with a warning, as a manifest's unreadable file is)."""
        from energytta.audio.io import crop_or_pad, decode_audio

        url, key = sample.get("__url__", "?"), sample["__key__"]
        where = f"{url}: {key}"
        caption = caption_of(sample, where)
        ext = next((k for k in AUDIO_KEYS if k in sample), None)
        if ext is None:
            raise UserError(f"{where} has no audio ({key}.wav or .flac); re-write the shard")
        try:
            wav = decode_audio(sample[ext], f"{where}.{ext}", self.sample_rate)
        except UserError as e:
            warnings.warn(f"skipping audio ({e})", stacklevel=2)
            return None
        if self.transform is not None:
            wav = self.transform(torch.from_numpy(wav)).numpy()
        # the crop's generator, as `dataset.item_rng` with the clip's key for its index
        rng = np.random.default_rng(np.random.SeedSequence(
            [self.seed, self.epoch, _key_seed(url, key)])) if self.train else None
        wav = crop_or_pad(wav, self.length, rng=rng)
        return {"wav": torch.from_numpy(np.ascontiguousarray(wav, np.float32)),
                "caption": caption}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Items; a bad shard ends the stream with {"error": message} (a worker's
        exception would reach the main process as a traceback, not one line)."""
        try:
            for sample in self._raw():
                item = self._decode(sample)
                if item is not None:
                    yield item
        except UserError as e:
            yield {"error": str(e)}

    def first(self, n: int, shuffle_epoch: int | None = None) -> list[dict[str, Any]]:
        """The first `n` items of the whole source (no process or worker split), read in
        this process: in file order, or shuffled as epoch `shuffle_epoch` (the clips that
        fit data statistics, the same in every process)."""
        view = copy.copy(self)
        view.set_rank(0, 1)
        view.train = shuffle_epoch is not None
        view.set_epoch(shuffle_epoch or 0)
        items = list(itertools.islice(iter(view), n))
        bad = next((it["error"] for it in items if "error" in it), None)
        if bad is not None:
            raise UserError(bad)
        if not items:
            raise UserError(f"the shards of data.train ({self.urls[0]}, ...) hold no readable "
                            "clip")
        return items


# ------------------------------------------------------------------ writing shards
def write_shards(manifest: str | Path, out: str | Path, per_shard: int,
                 audio_dir: str | Path | None = None) -> list[Path]:
    """Write `out/shard-000000.tar`, ... holding a manifest's clips, `per_shard` each.

    Each clip is stored as its file's bytes (`KEY.wav` / `.flac`, not re-encoded) beside
    `KEY.json` = {"text": caption, "attributes": {...}}; KEY is the row number (9 digits).
    Each shard is written atomically. Returns the shard paths.
    """
    import webdataset as wds

    from energytta.data.manifest import read_manifest
    from energytta.utils import atomic_path

    if per_shard < 1:
        raise UserError(f"--per-shard must be >= 1, got {per_shard}")
    items = read_manifest(manifest, audio_dir)
    out = Path(out)
    if out.is_dir() and any(out.glob(f"*{SHARD_SUFFIX}")):
        raise UserError(f"--out {out} already holds shards; pick an empty folder")
    missing = next((it.audio for it in items if not it.audio.is_file()), None)
    if missing is not None:
        raise UserError(f"{manifest}: audio file not found: {missing} (run `energytta-data "
                        "check` on the manifest)")
    odd = next((it.audio for it in items if it.audio.suffix.lower()[1:] not in AUDIO_KEYS), None)
    if odd is not None:
        raise UserError(f"{manifest}: {odd}: shards carry {', '.join(AUDIO_KEYS)} files; "
                        "convert it to one of them")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, len(items), per_shard)):
        path = out / f"shard-{s:06d}{SHARD_SUFFIX}"
        with atomic_path(path) as tmp, wds.TarWriter(str(tmp), encoder=False) as w:
            for i, it in enumerate(items[start:start + per_shard], start):
                meta = {"text": it.caption, "attributes": it.attributes}
                w.write({"__key__": f"{i:09d}", it.audio.suffix.lower().lstrip("."):
                         it.audio.read_bytes(), "json": json.dumps(meta).encode()})
        paths.append(path)
    return paths
