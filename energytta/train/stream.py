"""The data a run reads: the resumable training stream, and fixed sets of clips.

Training batches come from `BatchStream` (seeded per epoch, sharded over processes,
resumable at any batch), or from `ShardStream` for tar shards (`make_stream` picks); the
clips that fit data statistics (`fit_batches`) and the validation batches
(`first_batches`) are fixed lists, the same at every step and resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from energytta.errors import UserError
from energytta.train.seeds import FIT_SEED, derive_seed

FIT_ITEMS = 64  # clips used to fit data statistics (codec normalisation) at step 0
FIT_BATCH = 16


@dataclass
class Position:
    """Where the data stream stands: the next batch to load is `batch` of `epoch`, counted
    from global sample `start` of that epoch's permutation (0 unless the run resumed in
    this epoch under another process count or batch size: `resume_position`)."""

    epoch: int = 0
    batch: int = 0
    start: int = 0

    def samples(self, world: int, batch_size: int) -> int:
        """Samples of this epoch's permutation consumed by all processes together."""
        return self.start + self.batch * world * batch_size


def resume_position(saved: Position, saved_world: int, saved_batch_size: int, world: int,
                    batch_size: int) -> Position:
    """Where a resumed stream starts so that the global sample stream continues exactly.

    Every process draws from the same per-epoch permutation and the processes of one step
    together take its next `world · batch_size` samples (`BatchStream`), so a stream is
    fully described by (epoch, samples consumed); a new process count or batch size
    regroups the rest of the epoch from there, and later epochs are as they would have been.
    """
    if (saved_world, saved_batch_size) == (world, batch_size):
        return saved
    return Position(saved.epoch, 0, saved.samples(saved_world, saved_batch_size))


class BatchStream:
    """Endless, resumable stream of this process's batches.

    Each epoch is a permutation seeded by (seed, epoch), the same on every process; from
    `pos.start` on, process r takes every world-th index (DistributedSampler's split), cut
    so that all processes get the same number of full batches: step k of all processes
    together reads samples [start + k·world·B, start + (k+1)·world·B) of the permutation.
    Starting from `pos` skips the consumed batches without loading them.

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

    def epoch_batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """This process's index batches for `epoch`, from global sample `start` on."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        perm = torch.randperm(len(self.dataset), generator=g).tolist()[start:]
        per_rank = len(perm) // (self.batch_size * self.world) * self.batch_size
        mine = perm[self.rank::self.world][:per_rank]
        return [mine[i:i + self.batch_size] for i in range(0, per_rank, self.batch_size)]

    def indexed(self) -> Iterator[tuple[list[int], Any]]:
        """(dataset indices, collated batch) pairs, endlessly.

        One DataLoader serves every epoch, its workers persistent (started once, not per
        epoch); each index travels with its epoch (`_EpochItems`), so a worker's copy of
        the dataset crops for the right epoch without being rebuilt."""
        plan = _Plan()
        # worker seeds depend on the first epoch only, not on the global RNG at resume time
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.pos.epoch, self.rank, 1))
        loader = DataLoader(_EpochItems(self.dataset), batch_sampler=plan,
                            collate_fn=self.collate, num_workers=self.num_workers,
                            persistent_workers=self.num_workers > 0, generator=gen)
        while True:
            epoch = self.pos.epoch
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            order = self.epoch_batches(epoch, self.pos.start)[self.pos.batch:]
            plan.epoch, plan.batches = epoch, order
            for indices, batch in zip(order, loader):  # the loader keeps the sampler's order
                self.pos.batch += 1
                yield indices, batch
            self.pos = Position(epoch + 1, 0)

    def __iter__(self) -> Iterator[Any]:
        for _, batch in self.indexed():
            yield batch


class _Plan:
    """The batch sampler of the one DataLoader: this epoch's batches, set before each pass
    (each index paired with the epoch as its batch is drawn: no per-sample tuples held)."""

    def __init__(self) -> None:
        self.epoch, self.batches = 0, []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        return ([(epoch, i) for i in batch] for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _EpochItems(torch.utils.data.Dataset):
    """`dataset[(epoch, index)]` -> `dataset[index]` read as in `epoch` (persistent workers
    keep their own copy of the dataset, which the main process's `set_epoch` never reaches)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def fit_batches(dataset: Any, collate: Callable[[list], Any], seed: int) -> list[Any]:
    """`FIT_ITEMS` clips drawn by (seed, FIT_SEED), collated `FIT_BATCH` at a time."""
    if isinstance(dataset, IterableDataset):  # streamed shards: the first of a seeded shuffle
        items = dataset.first(FIT_ITEMS, shuffle_epoch=derive_seed(seed, FIT_SEED))
        return [collate(items[k:k + FIT_BATCH]) for k in range(0, len(items), FIT_BATCH)]
    g = torch.Generator().manual_seed(derive_seed(seed, FIT_SEED))
    idx = torch.randperm(len(dataset), generator=g)[:FIT_ITEMS].tolist()
    return [collate([dataset[i] for i in idx[k:k + FIT_BATCH]])
            for k in range(0, len(idx), FIT_BATCH)]


def first_batches(dataset: Any, collate: Callable[[list], Any], batch_size: int,
                  count: int) -> list[tuple[list[int], Any]]:
    """(indices, collated batch) of the first `count` batches in file order (the last one
    may be short when the dataset ends first)."""
    if isinstance(dataset, IterableDataset):  # streamed shards: no indices
        items = dataset.first(batch_size * count)
        return [([], collate(items[i:i + batch_size]))
                for i in range(0, len(items), batch_size)]
    n = min(len(dataset), batch_size * count)
    chunks = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return [(idx, collate([dataset[i] for i in idx])) for idx in chunks]


# ------------------------------------------------------------------ tar shards
class _Collate:
    """The batch collate, passing a worker's {"error"} item on as the batch."""

    def __init__(self, collate: Callable[[list], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list[dict[str, Any]]) -> Any:
        bad = next((it for it in items if "error" in it), None)
        return bad if bad is not None else self.collate(items)


def resume_salt(pos: Position) -> tuple[int, ...]:
    """What re-seeds an epoch entered mid-way (empty at an epoch boundary)."""
    return (pos.start, pos.batch) if pos.start or pos.batch else ()


class ShardStream:
    """Endless stream of this process's batches from tar shards
    (`energytta.data.shards.ShardDataset`), its position (epoch, batch) saved in every
    checkpoint as `BatchStream`'s is; but an iterable source cannot seek, so:

    - **Within an uninterrupted run**, epoch e reads the rank's shards of the (seed, e)
      shard shuffle, each DataLoader worker its own of them, samples shuffled in a seeded
      buffer; every worker's last partial batch is dropped (all batches are full).
    - **`--resume` at an epoch boundary** (a checkpoint at batch 0) continues exactly: the
      stream is a function of (seed, epoch, rank, worker) only.
    - **`--resume` in the middle of epoch e** does not replay the batches already read (that
      would decode them all again): it starts epoch e afresh with its shuffles re-seeded by
      where the run stopped (seed, e, samples before, batches read), so the same checkpoint
      always resumes into the same batches, a clip read before the stop may come again in
      that epoch and none waits longer than one epoch. From epoch e + 1 on the batches are
      those of the uninterrupted run. A resume under another process count behaves the same.

    Args: as `BatchStream`'s; `dataset` is a `ShardDataset`.
    """

    def __init__(self, dataset: Any, collate: Any, batch_size: int, seed: int, rank: int,
                 world: int, num_workers: int, pos: Position) -> None:
        self.dataset, self.collate, self.batch_size = dataset, _Collate(collate), batch_size
        self.seed, self.rank, self.world, self.num_workers = seed, rank, world, num_workers
        self.pos = pos
        readers = world * max(1, num_workers)
        if len(dataset.urls) < readers:
            raise UserError(f"data.train names {len(dataset.urls)} shard(s), fewer than the "
                            f"{world} process(es) × {max(1, num_workers)} worker(s) that each "
                            "read whole shards; write more, smaller shards (energytta-data "
                            "shards --per-shard N) or lower data.num_workers")

    def indexed(self) -> Iterator[tuple[list[int], Any]]:
        """([], collated batch) pairs, endlessly (no dataset indices: items are streamed)."""
        while True:
            epoch = self.pos.epoch
            self.dataset.set_epoch(epoch, resume_salt(self.pos))
            self.dataset.set_rank(self.rank, self.world)
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, self.rank, 1))
            # no drop_last: a worker's error item must arrive even alone; short batches
            # (each worker's last) are dropped here instead
            loader = DataLoader(self.dataset, batch_size=self.batch_size,
                                collate_fn=self.collate, num_workers=self.num_workers,
                                generator=gen)
            read = 0
            for batch in loader:
                if "error" in batch:
                    raise UserError(batch["error"])
                if len(batch["captions"]) < self.batch_size:
                    continue
                self.pos.batch += 1
                read += 1
                yield [], batch
            if read == 0:
                raise UserError(f"process {self.rank}'s shards of data.train gave no full "
                                f"batch of data.batch_size={self.batch_size} clips per worker; "
                                "lower data.batch_size or data.num_workers, or add clips")
            self.pos = Position(epoch + 1, 0)

    def __iter__(self) -> Iterator[Any]:
        for _, batch in self.indexed():
            yield batch


def make_stream(dataset: Any, collate: Any, batch_size: int, seed: int, rank: int,
                world: int, num_workers: int, pos: Position) -> BatchStream | ShardStream:
    """The training stream of `dataset`: `ShardStream` for streamed tar shards (an
    iterable dataset), else `BatchStream`."""
    cls = ShardStream if isinstance(dataset, IterableDataset) else BatchStream
    return cls(dataset, collate, batch_size, seed, rank, world, num_workers, pos)
