"""Datasets: raw (wav, caption) pairs from a manifest, or cached codec latents.

Randomness (training crops) comes from a numpy Generator seeded by (seed, epoch, index),
so a batch's content never depends on DataLoader workers or on where a run resumed. The
trainer calls `set_epoch(epoch)` at the start of each epoch.
"""
from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from energytta.config import AudioConfig, Config
from energytta.data.manifest import Item, open_manifest
from energytta.errors import UserError

INDEX_FILE = "index.json"
CODEC_FILE = "codec.safetensors"


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one (seed, epoch, index) draw."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


class AudioCaptionDataset(Dataset):
    """(wav, caption) pairs read from audio files.

    Args:
        items: a `Manifest` (`open_manifest`: rows read when asked for) or a list of Items.
        audio_cfg: sample rate of the returned waveforms.
        crop_seconds: every clip is cropped / zero-padded to this length.
        train: random crop offset (per seed, epoch, index); otherwise crop from the start.
        seed: crop seed (`train.seed`).
        transform: applied to each whole clip (S,) before the crop / pad (the codec's
            `clip_transform`, e.g. AudioLDM's per-file normalisation); None = none.
    """

    def __init__(self, items: Sequence[Item], audio_cfg: AudioConfig, crop_seconds: float,
                 train: bool, seed: int = 0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not items:
            raise UserError("the dataset has no items (empty manifest?)")
        if crop_seconds <= 0:
            raise UserError(f"audio.crop_seconds must be > 0, got {crop_seconds}")
        self.items = items
        self.sample_rate = audio_cfg.sample_rate
        self.length = int(round(crop_seconds * audio_cfg.sample_rate))
        self.train, self.seed, self.epoch = train, seed, 0
        self.transform = transform
        self.bad: set[int] = set()  # indices found unreadable (in this process)
        self.skipped = 0  # items replaced by the next good one (in this process)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> tuple[np.ndarray, str] | None:
        """(wav (S,), caption) of item `index`, or None (warned) when it cannot be read."""
        from energytta.audio.io import load_audio

        try:  # a manifest row is parsed here: a bad row is skipped like a bad file
            item = self.items[index]
            return load_audio(item.audio, self.sample_rate), item.caption
        except UserError as e:  # unreadable/missing/empty/bad row: skip, never crash mid-epoch
            self.bad.add(index)
            warnings.warn(f"skipping audio ({e}); {len(self.bad)} bad file(s) so far",
                          stacklevel=3)
            return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        """-> {"wav": (S,) float32 tensor, "caption": str}; a bad file yields the next good
        item (the crop still uses `index`'s generator)."""
        from energytta.audio.io import crop_or_pad

        n = len(self.items)
        for k in range(n):
            j = (index + k) % n
            if j in self.bad:
                continue
            loaded = self._load(j)
            if loaded is None:
                continue
            wav, caption = loaded
            self.skipped += k > 0
            rng = item_rng(self.seed, self.epoch, index) if self.train else None
            if self.transform is not None:
                wav = self.transform(torch.from_numpy(wav)).numpy()
            wav = crop_or_pad(wav, self.length, rng=rng)
            return {"wav": torch.from_numpy(np.ascontiguousarray(wav, np.float32)),
                    "caption": caption}
        raise UserError(f"none of the {n} audio files in the dataset could be read "
                        "(run `energytta-data check` on the manifest)")


def _close_all(handles: OrderedDict) -> None:
    """Close the (handle, captions) shards of `handles` (holds no reference to a dataset,
    so a finalizer calling it does not keep one alive)."""
    while handles:
        handles.popitem(last=False)[1][0].__exit__(None, None, None)


CACHE_DTYPES = {"float32": "F32", "float16": "F16"}  # index.json "dtype" -> safetensors'
MAX_OPEN_SHARDS = 32  # shard handles each process keeps open (least recently used closed)


class CachedLatentDataset(Dataset):
    """Codec latents + text states cached by `energytta-data cache`.

    Memory stays flat in the number of items: the item -> shard map is a numpy array of
    shard sizes, and a shard's captions are read with its handle; at most `max_open`
    shards are open per process (an LRU), and they are closed when the process exits.

    Args:
        folder: cache folder (index.json, shard-*.safetensors, codec.safetensors).
        crop_frames: latent frames per item (random crop in train, start crop otherwise;
            shorter items are padded with the codec's silence frame); 0 = whole items.
        train: random crops; seed: crop seed.
        max_open: shard files open at once in each process.
    Attributes:
        index: the parsed index.json; dtype: how the cache stores tensors ("float32" or
            "float16"; items are always float32); codec_state: the codec buffers the
            latents were made with (load them into the codec before decoding outputs).
    """

    def __init__(self, folder: str | Path, crop_frames: int, train: bool = True,
                 seed: int = 0, max_open: int = MAX_OPEN_SHARDS) -> None:
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.crop_frames, self.train, self.seed, self.epoch = crop_frames, train, seed, 0
        self.dtype = self.index.get("dtype", "float32")  # caches before fp16 are float32
        if self.dtype not in CACHE_DTYPES:
            raise UserError(f"{self.folder}: unknown cache dtype {self.dtype!r} (expected "
                            f"{' or '.join(CACHE_DTYPES)}); re-run `energytta-data cache`")
        self.files = [sh["file"] for sh in self.index["shards"]]
        # ends[k] = items in shards 0..k: item i lives in shard searchsorted(ends, i, "right")
        self.ends = np.cumsum([sh["count"] for sh in self.index["shards"]], dtype=np.int64)
        if not len(self.ends) or self.ends[-1] == 0:
            raise UserError(f"{self.folder}: the latent cache holds no items")
        self.silence = torch.tensor(self.index["silence_frame"], dtype=torch.float32)  # (C, F)
        self.max_open = max(1, max_open)
        self._open: OrderedDict[str, tuple[Any, list[str]]] = OrderedDict()

    @property
    def codec_state(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.folder / CODEC_FILE))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # open safetensors handles stay in their process
        return state

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.ends[-1])

    def close(self) -> None:
        """Close every shard handle this process holds."""
        _close_all(self._open)

    def _shard(self, file: str) -> tuple[Any, list[str]]:
        """(handle, captions) of a shard, opened on first use; the least recently used
        shard is closed when more than `max_open` are open."""
        if file in self._open:
            self._open.move_to_end(file)
            return self._open[file]
        from safetensors import safe_open

        if not self._open:  # close them when the dataset goes or its process (a worker) exits
            from multiprocessing.util import Finalize
            Finalize(self, _close_all, args=(self._open,), exitpriority=10)
        handle = safe_open(str(self.folder / file), "pt").__enter__()
        stored = handle.get_slice("latents.0").get_dtype() if "latents.0" in handle.keys() \
            else CACHE_DTYPES[self.dtype]
        if stored != CACHE_DTYPES[self.dtype]:
            handle.__exit__(None, None, None)
            raise UserError(f"{self.folder / file} holds {stored} latents but index.json says "
                            f"{self.dtype}; re-run `energytta-data cache` into a new folder")
        self._open[file] = (handle, json.loads(handle.metadata()["captions"]))
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)[1][0].__exit__(None, None, None)
        return self._open[file]

    def _crop(self, lat: torch.Tensor, index: int) -> torch.Tensor:
        """(C, T, F) -> (C, crop_frames, F)."""
        n, t = self.crop_frames, lat.shape[1]
        if n <= 0:
            return lat
        if t < n:
            pad = self.silence[:, None, :].expand(-1, n - t, -1)
            return torch.cat([lat, pad], dim=1)
        start = int(item_rng(self.seed, self.epoch, index).integers(0, t - n + 1)) \
            if self.train else 0
        return lat[:, start:start + n]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """-> {"latents": (C,T,F), "text": (L,D) float32, "text_mask": (L,) bool,
        "caption": str}."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of a {len(self)}-item cache")
        k = int(np.searchsorted(self.ends, index, side="right"))
        j = index - (int(self.ends[k - 1]) if k else 0)
        handle, captions = self._shard(self.files[k])
        return {"latents": self._crop(handle.get_tensor(f"latents.{j}").float(), index),
                "text": handle.get_tensor(f"text.{j}").float(),
                "text_mask": handle.get_tensor(f"text_mask.{j}").bool(),
                "caption": captions[j]}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of dataset items.

    Returns:
        {"captions": list[str]} for captions only (`CaptionDataset`),
        {"captions", "wav": (B, S)} for raw audio (zero-padded to the longest),
        or {"captions", "latents": (B,C,T,F), "text": (B,L,D), "text_mask": (B,L) bool}
        with text padded to the longest (padding masked out).
    """
    out: dict[str, Any] = {"captions": [it["caption"] for it in items]}
    if "wav" not in items[0] and "latents" not in items[0]:
        return out  # captions only (CaptionDataset)
    if "latents" in items[0]:
        out["latents"] = torch.stack([it["latents"] for it in items])
        length = max(it["text"].shape[0] for it in items)
        pad = torch.nn.functional.pad
        out["text"] = torch.stack([pad(it["text"], (0, 0, 0, length - it["text"].shape[0]))
                                   for it in items])
        out["text_mask"] = torch.stack([pad(it["text_mask"], (0, length - len(it["text_mask"])))
                                        for it in items])
        return out
    length = max(it["wav"].shape[-1] for it in items)
    out["wav"] = torch.stack([torch.nn.functional.pad(it["wav"], (0, length - it["wav"].shape[-1]))
                              for it in items])
    return out


def read_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a latent cache (no {INDEX_FILE}); make one with "
                        "`energytta-data cache`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt index ({e}); re-run `energytta-data cache`") from None


def cache_settings(cfg: Config) -> dict[str, Any]:
    """The config values latents and text states depend on (stored in index.json)."""
    keys = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max")
    codec = {"name": cfg.codec.name, "path": cfg.codec.path}
    if cfg.codec.name == "audioldm":  # older caches of other codecs stay valid
        codec["preprocess"] = cfg.codec.preprocess
    if cfg.codec.name == "pca":  # its latents' shape (older caches never name these keys)
        codec.update(pca_dim=cfg.codec.pca_dim, pca_frames=cfg.codec.pca_frames)
    text = {"model": cfg.text.model, "max_length": cfg.text.max_length}
    if cfg.text.extra_model:
        text["extra_model"] = cfg.text.extra_model
    return {"audio": {k: getattr(cfg.audio, k) for k in keys}, "codec": codec, "text": text}


def _check_cache(folder: Path, cfg: Config) -> dict[str, Any]:
    index = read_index(folder)
    want, have = cache_settings(cfg), index.get("settings", {})
    for section, values in want.items():
        for key, value in values.items():
            if have.get(section, {}).get(key) != value:
                raise UserError(f"{folder} was cached with {section}.{key}="
                                f"{have.get(section, {}).get(key)!r} but the config has "
                                f"{value!r}; re-cache or change the config")
    return index


def build_dataset(cfg: Config, split: str) -> Dataset:
    """The dataset named by `cfg.data.<split>`: a manifest file, a cached-latent folder or
    tar shards (`energytta.data.shards`).

    Args:
        cfg: full config (data paths, audio, codec, text, train.seed).
        split: "train" (random crops) or "val" (start crops).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    source = getattr(cfg.data, split)
    if not source:
        raise UserError(f"data.{split} is empty; set it to a manifest or a latent-cache folder")
    if cfg.data.kind == "captions":
        from energytta.data.captions import CaptionDataset
        return CaptionDataset.from_source(source)
    from energytta.data.shards import ShardDataset, is_shard_source
    if is_shard_source(source):  # tar shards (webdataset), streamed
        return ShardDataset.from_config(cfg, source, split)
    path = Path(source).expanduser()
    train = split == "train"
    if path.is_dir():
        index = _check_cache(path, cfg)
        frames = int(cfg.audio.crop_seconds * index["frames_per_second"] + 1e-6)
        return CachedLatentDataset(path, frames, train=train, seed=cfg.train.seed)
    if not path.exists():
        hint = " (make it with `energytta-data synth --out data/synth`)" \
            if "synth" in str(path) else ""
        raise UserError(f"data.{split}: {path} not found{hint}")
    from energytta.audio.codec import clip_transform
    return AudioCaptionDataset(open_manifest(path), cfg.audio, cfg.audio.crop_seconds,
                               train=train, seed=cfg.train.seed, transform=clip_transform(cfg))
