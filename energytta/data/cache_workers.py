"""Several processes encoding one latent cache (`energytta-data cache --workers N`).

Each worker process builds the codec (with the statistics already saved in the cache
folder) and the text encoder once, on its own device (GPU w mod the GPU count when the
device is CUDA, else the same device; CPU threads split between workers), then writes
the shards the pool hands it. Shard k holds the same items whoever writes it, and every
shard is written atomically, so the result equals one process's cache and an interrupted
run resumes with any number of workers. Processes are spawned, not forked: a forked
torch (threads, CUDA) is not safe to use.
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch

_STATE: dict[str, Any] = {}  # the worker process's job, codec, text encoder and device


def _devices(dev: torch.device, workers: int) -> list[str]:
    if dev.type == "cuda" and dev.index is None and torch.cuda.device_count() > 1:
        return [f"cuda:{w % torch.cuda.device_count()}" for w in range(workers)]
    return [str(dev)] * workers


def _init(job: Any, devices: Any, threads: int) -> None:
    """Worker start: its device (one from the queue), threads, codec and text encoder. A
    failure is kept and raised by the worker's first shard, so that the run stops with its
    message (an initializer's own exception only breaks the pool, message lost)."""
    from safetensors.torch import load_file

    from energytta.audio.codec import build_codec
    from energytta.data.dataset import CODEC_FILE
    from energytta.text import build_text_encoder

    try:
        torch.set_num_threads(threads)
        dev = torch.device(devices.get())
        codec = build_codec(job.cfg).to(dev).eval()
        codec.load_state_dict(load_file(str(job.out_dir / CODEC_FILE)), strict=True)
        _STATE.update(job=job, codec=codec, dev=dev,
                      text=build_text_encoder(job.cfg.text).to(dev))
    except Exception as e:  # re-raised by _write, where the pool passes it on
        _STATE["error"] = e


def _write(k: int) -> int:
    s = _STATE
    if "error" in s:
        raise s["error"]
    return s["job"].write(k, s["codec"], s["text"], s["dev"])


def write_shards_parallel(job: Any, workers: int, dev: torch.device,
                          progress: bool) -> list[dict[str, Any]]:
    """Write every unfinished shard of `job` with `workers` processes -> the index's shard
    list (in shard order). A worker's UserError stops the run with its one line."""
    from rich.progress import Progress

    ctx = mp.get_context("spawn")
    devices = ctx.Queue()
    for d in _devices(dev, workers):
        devices.put(d)
    threads = max(1, torch.get_num_threads() // workers)
    counts: dict[int, int] = {}
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                               initargs=(job, devices, threads))
    try:
        with Progress(disable=not progress) as bar:
            task = bar.add_task(f"caching latents ({workers} workers)", total=len(job.items))
            futures = {pool.submit(_write, k): k for k in range(job.num_shards)}
            for future in as_completed(futures):
                k = futures[future]
                counts[k] = future.result()
                bar.advance(task, job.size(k))
    except BaseException:  # Ctrl-C or a worker's error: finished shards stay for a rerun
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return [{"file": job.path(k).name, "count": counts[k]} for k in range(job.num_shards)]
