"""Grain input pipelines: deterministic shuffling, exact epochs, batching and length bucketing.

The order of one epoch is a plan of index batches drawn with numpy from `(seed, epoch)`, so the
same seed gives the same order, every epoch a different one, and the trainer can resume at any
batch of any epoch without replaying the ones before. grain maps the plan to batches (reading,
per-example transform, collation) and iterates it, in threads at most (worker processes take
seconds to start on a small machine).

Variable-length fields are padded to a bucketed length (few distinct shapes, so `jax.jit`
compiles few programs) with a boolean mask and the true lengths beside them; with `lengths`
given, batches group examples of similar length so that padding stays small.

Decoding a TFDS record costs ~0.05-0.1 ms in Python, a few ms per batch of 64: a split read once
into an `ArraySource` (variable-length fields as `Ragged` arrays, optionally cached as `.npz`
beside the records) gives whole padded batches by fancy indexing instead, in well under 1 ms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import grain
import numpy as np

from lnorm.logger import file_digest, temp_path, write_json_atomic

Example = dict[str, Any]
Batch = dict[str, np.ndarray]


class Source(Protocol):
    """What a pipeline reads: random access by index (TFDS `as_data_source()`, `ArraySource`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


@dataclasses.dataclass(frozen=True, eq=False)
class Ragged:
    """Variable-length rows in two arrays: row `i` is `values[offsets[i]:offsets[i + 1]]`.

    A split's token ids held this way cost one Python object per field, not per example, and
    `pad` gathers a padded batch of rows with one fancy-indexing call."""

    values: np.ndarray  # [total, ...], the rows one after another
    offsets: np.ndarray  # int64 [N + 1], from 0 to total

    @classmethod
    def from_rows(cls, rows: Sequence[Any]) -> Ragged:
        arrays = [np.asarray(r) for r in rows]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        values = np.concatenate(arrays) if arrays else np.zeros(0)
        return cls(values, offsets)

    @classmethod
    def concatenate(cls, parts: Sequence[Ragged]) -> Ragged:
        """The rows of `parts`, one part after the other."""
        starts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = [p.offsets[1:] + start for p, start in zip(parts, starts, strict=True)]
        return cls(np.concatenate([p.values for p in parts]),
                   np.concatenate([parts[0].offsets[:1], *offsets]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def with_end(self, value: Any) -> Ragged:
        """Every row with `value` appended (e.g. an end-of-sentence token)."""
        return Ragged(np.insert(self.values, self.offsets[1:], value),
                      self.offsets + np.arange(len(self.offsets)))

    def pad(self, indices: np.ndarray, pad: Pad) -> Batch:
        """The rows at `indices` padded as `pad_field` pads them (flat `pad` only)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = (self.offsets[indices + 1] - starts).astype(np.int32)
        length = bucket_length(int(lengths.max(initial=0)), pad.buckets)
        positions = np.arange(length)
        mask = positions < lengths[:, None]
        out = np.full((len(indices), length, *self.values.shape[1:]), pad.value,
                      dtype=self.values.dtype)
        out[mask] = self.values[(starts[:, None] + positions)[mask]]
        return {"": out, "_mask": mask, "_length": lengths}


RAGGED_OFFSETS = ".offsets"  # a Ragged field `k` is cached as arrays `k` and `k.offsets`


class ArraySource:
    """An in-memory source: one numpy array (or `Ragged`, for variable-length fields) per
    field, one row per example. `gather` reads a whole batch with one fancy-indexing call per
    field, which is what makes tiny batches fast."""

    def __init__(self, arrays: Mapping[str, np.ndarray | Ragged]):
        sizes = {k: len(v) for k, v in arrays.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ValueError(f"ArraySource needs fields of one common length; got {sizes}")
        self.arrays = {k: v if isinstance(v, Ragged) else np.asarray(v)
                       for k, v in arrays.items()}
        self._size = next(iter(sizes.values()))

    @classmethod
    def from_source(
        cls,
        source: Source,
        *,
        ragged: Sequence[str] = (),
        cache: str | os.PathLike | None = None,
        chunk: int = 4096,
    ) -> ArraySource:
        """Reads every example of `source` into memory once (chunked reads); the fields named
        in `ragged` may vary in length and are held as `Ragged`, the others are stacked.

        With `cache` (an `.npz` path, e.g. inside the prepared TFDS folder, which never changes
        once written; see `split_cache`) the arrays are saved there the first time and loaded
        from there after: TFDS decodes records one by one in Python (~0.1 ms each), numpy loads
        them at once. The cache is trusted only when it matches the size and SHA-256 recorded
        beside it (`<cache>.json`) and agrees with `source` (example count, first and last
        example); otherwise it is rebuilt, with a warning saying what was wrong.
        """
        if len(source) == 0:
            raise ValueError("ArraySource.from_source over an empty source")
        if cache is not None:
            arrays = _load_cache(Path(cache), source)
            if arrays is not None:
                return cls(arrays)
        parts: dict[str, list[Any]] = {}  # a chunk's rows as one array: few Python objects
        for lo in range(0, len(source), chunk):
            examples = _read(source, range(lo, min(lo + chunk, len(source))))
            for k in examples[0]:
                rows = [e[k] for e in examples]
                parts.setdefault(k, []).append(
                    Ragged.from_rows(rows) if k in ragged else np.stack(rows))
        out = cls({k: Ragged.concatenate(v) if k in ragged else np.concatenate(v)
                   for k, v in parts.items()})
        if cache is not None:
            _save_cache(Path(cache), out.arrays)
        return out

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> Example:
        return {k: v[index] for k, v in self.arrays.items()}

    def gather(self, indices: np.ndarray, pad: Mapping[str, Pad] | None = None) -> Batch:
        """The examples at `indices` collated as `collate` does, `Ragged` fields padded by
        fancy indexing (other padded fields row by row)."""
        if pad:
            _check_pad(self.arrays, pad)
        batch: Batch = {}
        for key, v in self.arrays.items():
            how = pad.get(key) if pad else None
            if how is None:
                batch[key] = v[indices] if isinstance(v, np.ndarray) else np.stack(
                    [v[i] for i in indices])
                continue
            if isinstance(v, Ragged) and not how.nested:
                fields = v.pad(indices, how)
            else:
                fields = pad_field([v[i] for i in indices], how)
            batch.update({key + suffix: arr for suffix, arr in fields.items()})
        return batch


def split_cache(source: Source) -> Path | None:
    """Where `ArraySource.from_source` may cache a prepared TFDS split: `<split>.npz` beside
    its records (`builder.as_data_source(split)`). None for other sources, split slices
    (`train[:10%]`) and folders this process cannot write (a shared read-only copy)."""
    info, split = getattr(source, "dataset_info", None), getattr(source, "split", None)
    folder = getattr(info, "data_dir", None)
    if folder is None or not isinstance(split, str) or not split.isidentifier():
        return None
    return Path(folder) / f"{split}.npz" if os.access(folder, os.W_OK) else None


def _cache_record(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def _cache_problem(cache: Path, source: Source) -> str | None:
    """What is wrong with an `.npz` cache by its record, or None."""
    try:
        record = json.loads(_cache_record(cache).read_text())
        size, sha, count = int(record["size"]), str(record["sha256"]), int(record["examples"])
    except FileNotFoundError:
        return f"has no record {_cache_record(cache).name} (written by an older version?)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"has an unreadable record {_cache_record(cache).name}"
    actual = cache.stat().st_size
    if actual != size:
        cut = " (truncated)" if actual < size else ""
        return f"has {actual} bytes, {size} when written{cut}"
    if file_digest(cache) != sha:
        return "has other contents than when written (checksum mismatch)"
    if count != len(source):
        return f"holds {count} examples, the prepared split {len(source)}"
    return None


def _load_cache(cache: Path, source: Source) -> dict[str, np.ndarray | Ragged] | None:
    """The cached arrays when the cache verifies and agrees with `source`, else None (with a
    warning when a cache was there)."""
    if not cache.exists():
        return None
    problem = _cache_problem(cache, source)
    if problem is None:
        try:
            with np.load(cache) as f:
                stored = {k: f[k] for k in f.files}
            arrays = {k: Ragged(v, stored[k + RAGGED_OFFSETS])
                      if k + RAGGED_OFFSETS in stored else v
                      for k, v in stored.items() if not k.endswith(RAGGED_OFFSETS)}
            ends = sorted({0, len(source) - 1})
            for i, example in zip(ends, _read(source, ends), strict=True):
                if set(example) != set(arrays) or not all(
                    np.array_equal(arrays[k][i], np.asarray(v)) for k, v in example.items()
                ):
                    problem = f"differs from the prepared data at example {i}"
                    break
            else:
                return arrays
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            problem = f"is unreadable ({type(e).__name__}: {e})"
    warnings.warn(f"{cache} {problem}: rebuilding it from the prepared data", stacklevel=3)
    return None


def _save_cache(cache: Path, arrays: Mapping[str, np.ndarray | Ragged]) -> None:
    """Writes the `.npz` atomically (a crash never leaves half of one), then its record."""
    stored = {}
    for k, v in arrays.items():
        if isinstance(v, Ragged):
            stored[k], stored[k + RAGGED_OFFSETS] = v.values, v.offsets
        else:
            stored[k] = v
    tmp = temp_path(cache)
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **stored)
            f.flush()
            os.fsync(f.fileno())
        record = {"size": tmp.stat().st_size, "sha256": file_digest(tmp),
                  "examples": len(next(iter(arrays.values())))}
        os.replace(tmp, cache)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_json_atomic(_cache_record(cache), record)


@dataclasses.dataclass(frozen=True)
class Pad:
    """How to pad one variable-length field of a batch.

    A flat field holds one array `[T, ...]` per example and becomes `key [B, L, ...]`,
    `key_mask [B, L]` (bool) and `key_length [B]` (int32). A nested field (`nested=True`) holds
    a sequence of such arrays per example (e.g. the sentences of a document) and becomes
    `key [B, S, L, ...]`, `key_mask [B, S, L]`, `key_length [B, S]` and `key_count [B]`.
    `L` is the smallest of `buckets` that fits the longest sequence in the batch (beyond the
    last boundary: the next multiple of it), or that longest length when `buckets` is None;
    `outer_buckets` does the same for `S`.
    """

    value: float = 0
    buckets: tuple[int, ...] | None = None
    nested: bool = False
    outer_buckets: tuple[int, ...] | None = None

    def __post_init__(self):
        for name in ("buckets", "outer_buckets"):
            b = getattr(self, name)
            if b is not None and (not b or any(x <= 0 for x in b) or list(b) != sorted(b)):
                raise ValueError(f"Pad.{name} must be increasing positive lengths; got {b}")
        if self.outer_buckets is not None and not self.nested:
            raise ValueError("Pad.outer_buckets applies to nested fields only (nested=True)")


def bucket_length(length: int, buckets: Sequence[int] | None) -> int:
    """The padded length for `length`: the smallest boundary that fits it, the next multiple of
    the last boundary beyond it, or `length` itself without boundaries."""
    if buckets is None:
        return length
    for b in buckets:
        if length <= b:
            return b
    return math.ceil(length / buckets[-1]) * buckets[-1]


def _pad_flat(seqs: Sequence[np.ndarray], length: int, value: float) -> tuple[np.ndarray, ...]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    out = np.full((len(seqs), length, *seqs[0].shape[1:]), value, dtype=np.result_type(*seqs))
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    mask = np.arange(length) < lengths[:, None]
    return out, mask, lengths


def pad_field(values: Sequence[Any], pad: Pad) -> Batch:
    """Pads one field over a batch; returns `{"": padded, "_mask": ..., "_length": ...}` (plus
    `"_count"` for nested fields), keys to be prefixed with the field's name."""
    if not pad.nested:
        seqs = [np.asarray(v) for v in values]
        longest = max((len(s) for s in seqs), default=0)
        out, mask, lengths = _pad_flat(seqs, bucket_length(longest, pad.buckets), pad.value)
        return {"": out, "_mask": mask, "_length": lengths}
    docs = [[np.asarray(s) for s in v] for v in values]
    counts = np.array([len(d) for d in docs], dtype=np.int32)
    num = bucket_length(int(counts.max(initial=0)), pad.outer_buckets)
    longest = max((len(s) for d in docs for s in d), default=0)
    length = bucket_length(longest, pad.buckets)
    rows = [_pad_flat(d, length, pad.value) if d else None for d in docs]
    template = next((r[0] for r in rows if r is not None), np.zeros((0, length)))
    out = np.full((len(docs), num, *template.shape[1:]), pad.value, dtype=template.dtype)
    mask = np.zeros((len(docs), num, length), dtype=bool)
    lengths = np.zeros((len(docs), num), dtype=np.int32)
    for i, r in enumerate(rows):
        if r is not None:
            out[i, : counts[i]], mask[i, : counts[i]], lengths[i, : counts[i]] = r
    return {"": out, "_mask": mask, "_length": lengths, "_count": counts}


def _check_pad(fields: Collection[str], pad: Mapping[str, Pad]) -> None:
    """Every padded field exists, and its `_mask`/`_length`/`_count` names are free."""
    missing = set(pad) - set(fields)
    if missing:
        raise KeyError(
            f"Pad given for fields {sorted(missing)} that examples lack; fields: {sorted(fields)}"
        )
    for key, p in pad.items():
        for suffix in ("_mask", "_length", "_count") if p.nested else ("_mask", "_length"):
            if key + suffix in fields:
                raise ValueError(f"padding field {key!r} would overwrite field {key + suffix!r}")


def collate(examples: Sequence[Example], pad: Mapping[str, Pad] | None = None) -> Batch:
    """Stacks a list of examples into a dict of arrays, padding the fields named in `pad`."""
    pad = pad or {}
    _check_pad(examples[0], pad)
    batch: Batch = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if key in pad:
            batch.update({key + suffix: arr for suffix, arr in pad_field(values, pad[key]).items()})
        else:
            batch[key] = np.stack([np.asarray(v) for v in values])
    return batch


def sequence_lengths(
    source: Source, key: str, *, nested: bool = False, chunk: int = 4096
) -> np.ndarray:
    """The length of field `key` of every example (one pass over `source`), for bucketing; a
    nested field's length is the total over its inner sequences."""
    measure = (lambda v: sum(len(s) for s in v)) if nested else len
    return np.array([measure(e[key]) for e in iter_examples(source, chunk)], dtype=np.int64)


def _read(source: Source, indices: Sequence[int]) -> list[Example]:
    """Reads several examples, batched where the source supports it (TFDS data sources do)."""
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        return list(getitems([int(i) for i in indices]))
    return [source[int(i)] for i in indices]


def iter_examples(source: Source, chunk: int = 4096) -> Iterator[Example]:
    """Every example of `source` in order, read `chunk` at a time."""
    for lo in range(0, len(source), chunk):
        yield from _read(source, range(lo, min(lo + chunk, len(source))))


def digest(batches: Iterable[Batch]) -> str:
    """A SHA-256 (16 hex digits) of a sequence of batches: field names, dtypes, shapes and
    bytes, so that a pipeline's output can be pinned across versions of the code."""
    h = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            a = np.ascontiguousarray(batch[key])
            h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def batch_plan(
    num_examples: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = False,
    lengths: np.ndarray | None = None,
    bucket_window: int = 64,
) -> list[np.ndarray]:
    """The index batches of one epoch: every example once (the last partial batch dropped with
    `drop_remainder`), in an order fixed by `(seed, epoch)`.

    With `lengths`, the shuffled order is cut into windows of `bucket_window` batches, each
    window sorted by length and cut into batches, and the full batches shuffled: batches hold
    examples of similar length while the epoch stays exact and random. Any partial batch comes
    last.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_examples) if shuffle else np.arange(num_examples)
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (num_examples,):
            raise ValueError(f"lengths must have shape ({num_examples},); got {lengths.shape}")
        window = batch_size * bucket_window
        order = np.concatenate(
            [order[:0]]
            + [
                w[np.argsort(lengths[w], kind="stable")]
                for w in np.split(order, range(window, num_examples, window))
            ]
        )
    full = num_examples // batch_size * batch_size
    batches = list(order[:full].reshape(-1, batch_size))
    if lengths is not None and shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    if full < num_examples and not drop_remainder:
        batches.append(order[full:])
    return batches


class Pipeline:
    """Batches of one split, epoch by epoch: `pipeline.batches(epoch, start)` yields the batches
    of `epoch` from batch `start` on; `len(pipeline)` is the number of batches per epoch.

    `transform` maps each example before collation, `batch_transform` each collated batch;
    `pad` names the variable-length fields and how to pad them; `lengths` (one per example, see
    `sequence_lengths`) turns on length bucketing. An `ArraySource` without a per-example
    transform is read a batch at a time by fancy indexing, padding included (`Ragged` fields;
    no per-example Python): do per-example work once over the arrays, or per batch in
    `batch_transform`.

    grain reads `read_block` batches per element: its per-element bookkeeping (~40 us) would
    otherwise dominate tiny batches. `num_threads`/`prefetch` read blocks ahead in threads, which
    pays off for slow per-example decoding only.

    `batch_size` is global. With several processes (`jax.distributed`), every process draws
    the same plan and reads only its contiguous share of each batch (`process_index` of
    `process_count`, by default JAX's), in process order, which is how
    `jax.make_array_from_process_local_data` assembles the global batch; a batch that does not
    split evenly (an evaluation's last one) is split as evenly as possible.
    """

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = False,
        transform: Callable[[Example], Example] | None = None,
        batch_transform: Callable[[Batch], Batch] | None = None,
        pad: Mapping[str, Pad] | None = None,
        lengths: np.ndarray | None = None,
        bucket_window: int = 64,
        num_threads: int = 0,
        prefetch: int = 0,
        read_block: int = 16,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if len(source) == 0:
            raise ValueError("Pipeline over an empty source")
        if batch_size <= 0 or read_block <= 0:
            raise ValueError(
                f"batch_size and read_block must be positive; got {batch_size}, {read_block}"
            )
        if lengths is not None and np.shape(lengths) != (len(source),):
            raise ValueError(f"lengths must have shape ({len(source)},); got {np.shape(lengths)}")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.transform = transform
        self.batch_transform = batch_transform
        self.pad = dict(pad or {})
        self.lengths = lengths
        self.bucket_window = bucket_window
        self.read_block = read_block
        if process_count is None or process_index is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} of process_count={process_count}")
        if drop_remainder and batch_size % process_count:
            raise ValueError(f"batch_size={batch_size} (global) must split evenly over the "
                             f"{process_count} processes")
        self.process_index, self.process_count = process_index, process_count
        self.read_options = grain.ReadOptions(
            num_threads=num_threads, prefetch_buffer_size=prefetch
        )

    def __len__(self) -> int:
        n, b = len(self.source), self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    @property
    def num_examples(self) -> int:
        return len(self.source)

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The index batches of `epoch` (see `batch_plan`)."""
        return batch_plan(
            len(self.source),
            self.batch_size,
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            drop_remainder=self.drop_remainder,
            lengths=self.lengths,
            bucket_window=self.bucket_window,
        )

    def load(self, indices: np.ndarray) -> Batch:
        """Reads, transforms and collates the examples at `indices` into one batch."""
        gather = getattr(self.source, "gather", None)
        if gather is not None and self.transform is None:
            batch = gather(indices, self.pad)
        else:
            examples = _read(self.source, indices)
            if self.transform is not None:
                examples = [self.transform(e) for e in examples]
            batch = collate(examples, self.pad)
        return batch if self.batch_transform is None else self.batch_transform(batch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from batch `start` on (resuming mid-epoch)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}] batches; got {start}")
        plan = self.plan(epoch)[start:]
        if self.process_count > 1:
            plan = [np.array_split(b, self.process_count)[self.process_index] for b in plan]
        blocks = [plan[i : i + self.read_block] for i in range(0, len(plan), self.read_block)]
        ds = grain.MapDataset.source(blocks).map(lambda block: [self.load(b) for b in block])
        return itertools.chain.from_iterable(ds.to_iter_dataset(self.read_options))

    __call__ = batches
