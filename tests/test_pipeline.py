"""The grain pipeline: exact, deterministic epochs, resume, padding/masks and length bucketing;
the verified `.npz` cache of an in-memory source; variable-length fields held in memory
(`Ragged`) give the same batches as the per-example path."""

import hashlib
import json
import warnings

import numpy as np
import pytest

from lnorm.data.pipeline import (
    ArraySource,
    Pad,
    Pipeline,
    Ragged,
    batch_plan,
    bucket_length,
    collate,
    digest,
    sequence_lengths,
    split_cache,
)


def _source(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return ArraySource({"x": rng.normal(size=(n, 3)).astype(np.float32), "id": np.arange(n)})


def _ids(pipeline, epoch, start=0):
    return [b["id"].tolist() for b in pipeline.batches(epoch, start)]


def _flat(batches):
    return [i for b in batches for i in b]


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_every_example_once_per_epoch(drop_remainder):
    p = Pipeline(_source(23), batch_size=5, seed=3, drop_remainder=drop_remainder)
    batches = _ids(p, 0)
    assert len(batches) == len(p) == (4 if drop_remainder else 5)
    assert [len(b) for b in batches] == [5, 5, 5, 5] + ([] if drop_remainder else [3])
    flat = _flat(batches)
    assert len(set(flat)) == len(flat)
    assert set(flat) == set(range(23)) if not drop_remainder else len(flat) == 20


def test_order_depends_on_seed_and_epoch_only():
    p, same, other = (Pipeline(_source(), batch_size=4, seed=s) for s in (1, 1, 2))
    assert _ids(p, 0) == _ids(same, 0)
    assert _ids(p, 0) != _ids(p, 1)
    assert _ids(p, 0) != _ids(other, 0)
    assert _flat(_ids(p, 0)) != list(range(23))  # actually shuffled


def test_no_shuffle_is_sequential():
    p = Pipeline(_source(), batch_size=4, shuffle=False)
    assert _flat(_ids(p, 0)) == list(range(23)) == _flat(_ids(p, 5))


@pytest.mark.parametrize("start", [0, 1, 4, 5, 6])
def test_resume_yields_exactly_the_remaining_batches(start):
    p = Pipeline(_source(23), batch_size=4, seed=7, read_block=2)
    assert _ids(p, 2, start) == _ids(p, 2)[start:]


def test_resume_out_of_range():
    p = Pipeline(_source(23), batch_size=4)
    with pytest.raises(ValueError, match=r"start must be in \[0, 6\]"):
        p.batches(0, 7)


def test_batches_hold_the_source_rows():
    src = _source()
    for b in Pipeline(src, batch_size=4, seed=0).batches(0):
        np.testing.assert_array_equal(b["x"], src.arrays["x"][b["id"]])


def test_transforms_and_per_example_path_match_fast_path():
    src = _source()
    fast = Pipeline(src, batch_size=4, seed=0)
    slow = Pipeline(
        src,
        batch_size=4,
        seed=0,
        transform=lambda e: {**e, "x2": 2 * e["x"]},
        batch_transform=lambda b: {**b, "n": np.int32(len(b["id"]))},
    )
    for a, b in zip(fast.batches(0), slow.batches(0), strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(2 * a["x"], b["x2"])
        assert b["n"] == len(a["id"])


def test_plain_sequence_source_and_threads():
    rows = [{"id": i, "v": np.full(2, i)} for i in range(10)]
    p = Pipeline(rows, batch_size=3, seed=1, num_threads=2, prefetch=2, read_block=1)
    got = _flat(b["id"].tolist() for b in p.batches(0))
    assert sorted(got) == list(range(10))
    assert ArraySource.from_source(rows, chunk=3).arrays["v"].tolist() == [
        [i, i] for i in range(10)
    ]


def test_bucket_length():
    assert bucket_length(0, (4, 8)) == 4
    assert bucket_length(4, (4, 8)) == 4
    assert bucket_length(5, (4, 8)) == 8
    assert bucket_length(9, (4, 8)) == 16  # beyond the last boundary: its next multiple
    assert bucket_length(7, None) == 7
    with pytest.raises(ValueError, match="increasing"):
        Pad(buckets=(8, 4))


def test_padding_masks_and_lengths_match_a_hand_built_batch():
    seqs = [np.array([1, 2, 3]), np.array([4]), np.array([], dtype=np.int64)]
    batch = collate([{"tok": s, "y": i} for i, s in enumerate(seqs)], {"tok": Pad(-1, (2, 4))})
    np.testing.assert_array_equal(batch["tok"], [[1, 2, 3, -1], [4, -1, -1, -1], [-1] * 4])
    np.testing.assert_array_equal(batch["tok_length"], [3, 1, 0])
    np.testing.assert_array_equal(batch["tok_mask"], np.arange(4) < batch["tok_length"][:, None])
    assert batch["tok_mask"].dtype == bool and batch["y"].tolist() == [0, 1, 2]


def test_padding_keeps_feature_dims():
    pts = [np.ones((2, 3), np.float32), np.ones((5, 3), np.float32)]
    batch = collate([{"pts": p} for p in pts], {"pts": Pad()})
    assert batch["pts"].shape == (2, 5, 3) and batch["pts"].dtype == np.float32
    assert batch["pts"].sum() == 3 * 7
    empty_first = [np.zeros((0,), np.int32), np.array([5], np.int32)]
    assert collate([{"t": t} for t in empty_first], {"t": Pad()})["t"].dtype == np.int32


def test_nested_padding():
    docs = [[np.array([1, 2]), np.array([3])], [np.array([4, 5, 6])], []]
    batch = collate([{"s": d} for d in docs], {"s": Pad(0, nested=True, outer_buckets=(2, 4))})
    expected = np.zeros((3, 2, 3), np.int64)
    expected[0, 0, :2], expected[0, 1, :1], expected[1, 0, :3] = [1, 2], [3], [4, 5, 6]
    np.testing.assert_array_equal(batch["s"], expected)
    np.testing.assert_array_equal(batch["s_length"], [[2, 1], [3, 0], [0, 0]])
    np.testing.assert_array_equal(batch["s_count"], [2, 1, 0])
    np.testing.assert_array_equal(batch["s_mask"], np.arange(3) < batch["s_length"][..., None])


def test_collate_errors_name_the_field():
    with pytest.raises(KeyError, match="'nope'"):
        collate([{"a": np.ones(2)}], {"nope": Pad()})
    with pytest.raises(ValueError, match="'a_mask'"):
        collate([{"a": np.ones(2), "a_mask": 1}], {"a": Pad()})


def _padded_cells(pipeline, epoch=0):
    return sum(b["tok"].size for b in pipeline.batches(epoch))


def test_bucketing_reduces_padding_and_keeps_epochs_exact():
    rng = np.random.default_rng(0)
    rows = [{"id": i, "tok": np.ones(rng.integers(1, 60))} for i in range(400)]
    lengths = sequence_lengths(rows, "tok", chunk=64)
    assert lengths.tolist() == [len(r["tok"]) for r in rows]
    kw = dict(batch_size=8, seed=0, pad={"tok": Pad()})
    plain, bucketed = Pipeline(rows, **kw), Pipeline(rows, lengths=lengths, bucket_window=16, **kw)
    assert _padded_cells(bucketed) < 0.7 * _padded_cells(plain)
    for epoch in (0, 1):
        ids = _flat(_ids(bucketed, epoch))
        assert sorted(ids) == list(range(400))
    assert _ids(bucketed, 0) != _ids(bucketed, 1)
    assert _ids(bucketed, 0) == _ids(Pipeline(rows, lengths=lengths, bucket_window=16, **kw), 0)


def test_bucketed_plan_keeps_the_partial_batch_last():
    plan = batch_plan(
        21, 4, seed=0, epoch=0, lengths=np.arange(21) % 5, bucket_window=2, drop_remainder=False
    )
    assert [len(b) for b in plan] == [4] * 5 + [1]
    assert sorted(np.concatenate(plan).tolist()) == list(range(21))


def test_nested_sequence_lengths():
    rows = [{"s": [np.ones(2), np.ones(3)]}, {"s": []}]
    assert sequence_lengths(rows, "s", nested=True).tolist() == [5, 0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="lengths must have shape"):
        Pipeline(_source(5), batch_size=2, lengths=np.ones(4))
    with pytest.raises(ValueError, match="empty source"):
        Pipeline([], batch_size=2)
    with pytest.raises(ValueError, match="one common length"):
        ArraySource({"a": np.ones(2), "b": np.ones(3)})


# --- the .npz cache -------------------------------------------------------------------------------


class _CountingSource:
    """Rows {image, label}; counts the examples read (a cache hit reads only two, to check)."""

    def __init__(self, n=50):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 255, size=(n, 4, 4), dtype=np.uint8)
        self.labels = rng.integers(0, 10, size=n)
        self.reads = 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        self.reads += 1
        return {"image": self.images[i], "label": self.labels[i]}


def _cached(source, cache, warns=None):
    source.reads = 0
    if warns is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = ArraySource.from_source(source, cache=cache)
    else:
        with pytest.warns(UserWarning, match=warns):
            out = ArraySource.from_source(source, cache=cache)
    np.testing.assert_array_equal(out.arrays["image"], source.images)
    np.testing.assert_array_equal(out.arrays["label"], source.labels)
    return out


def _tamper(cache, how):
    if how == "truncated":
        cache.write_bytes(cache.read_bytes()[:100])
    elif how == "labels":  # a valid npz with other labels
        with np.load(cache) as f:
            arrays = dict(f)
        arrays["label"] = (arrays["label"] + 1) % 10
        with open(cache, "wb") as f:
            np.savez(f, **arrays)
    elif how == "no record":
        cache.with_name(cache.name + ".json").unlink()
    else:
        with np.load(cache) as f:
            arrays = {k: v[:-1] for k, v in f.items()}
        with open(cache, "wb") as f:
            np.savez(f, **arrays)
        record = cache.with_name(cache.name + ".json")
        meta = json.loads(record.read_text())
        meta.update(size=cache.stat().st_size, examples=len(arrays["label"]))
        meta["sha256"] = hashlib.sha256(cache.read_bytes()).hexdigest()
        record.write_text(json.dumps(meta))


def test_cache_is_written_once_and_read_back(tmp_path):
    source, cache = _CountingSource(), tmp_path / "train.npz"
    _cached(source, cache)
    assert source.reads == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npz", "train.npz.json"]
    _cached(source, cache)
    assert source.reads == 2  # the first and last example, compared with the cache


@pytest.mark.parametrize("how, what", [
    ("truncated", r"train\.npz has \d+ bytes, \d+ when written \(truncated\)"),
    ("labels", r"train\.npz has other contents than when written \(checksum mismatch\)"),
    ("no record", r"train\.npz has no record train\.npz\.json"),
    ("fewer", r"train\.npz holds 49 examples, the prepared split 50"),
])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, how, what):
    source, cache = _CountingSource(), tmp_path / "train.npz"
    _cached(source, cache)
    _tamper(cache, how)
    _cached(source, cache, warns=what + ".*: rebuilding it from the prepared data")
    assert source.reads == 50
    _cached(source, cache)  # the rebuilt cache verifies
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npz", "train.npz.json"]


def test_cache_that_disagrees_with_the_prepared_data_is_rebuilt(tmp_path):
    source, cache = _CountingSource(), tmp_path / "train.npz"
    _cached(source, cache)
    source.labels[-1] = (source.labels[-1] + 1) % 10  # the data was prepared again, differently
    _cached(source, cache, warns=r"differs from the prepared data at example 49")


def test_failed_cache_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="disk full"):
        ArraySource.from_source(_CountingSource(), cache=tmp_path / "train.npz")
    assert list(tmp_path.iterdir()) == []


# --- variable-length fields in memory (Ragged) ----------------------------------------------------


def _ragged_rows(n=40, seed=0):
    """Rows {tok: int32 [0..20) tokens (some empty), pts: float32 [T, 2], y: int}."""
    rng = np.random.default_rng(seed)
    return [{"tok": rng.integers(1, 99, size=rng.integers(0, 20)).astype(np.int32),
             "pts": rng.normal(size=(rng.integers(1, 6), 2)).astype(np.float32),
             "y": np.int32(i)} for i in range(n)]


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_ragged_rows_lengths_and_end():
    r = Ragged.from_rows([np.array([1, 2, 3]), np.array([], np.int64), np.array([4])])
    assert r.offsets.tolist() == [0, 3, 3, 4] and len(r) == 3
    assert r[0].tolist() == [1, 2, 3] and r[1].tolist() == [] and r.lengths.tolist() == [3, 0, 1]
    ended = r.with_end(9)
    assert [ended[i].tolist() for i in range(3)] == [[1, 2, 3, 9], [9], [4, 9]]


@pytest.mark.parametrize("pad", [
    {"tok": Pad()},
    {"tok": Pad(-1, (4, 8)), "pts": Pad(buckets=(3,))},
    {"tok": Pad(7, (32,)), "pts": Pad(0.5)},
])
def test_ragged_gather_equals_collate(pad):
    rows = _ragged_rows()
    source = ArraySource.from_source(rows, ragged=("tok", "pts"), chunk=7)
    assert isinstance(source.arrays["tok"], Ragged) and source.arrays["y"].shape == (40,)
    rng = np.random.default_rng(1)
    for indices in (rng.permutation(40)[:9], np.array([1, 1, 3]), np.arange(40)):
        expected = collate([rows[i] for i in indices], {"pts": Pad(), **pad})
        _assert_batches_equal(source.gather(indices, {"pts": Pad(), **pad}), expected)


def test_gather_checks_pad_like_collate():
    source = ArraySource.from_source(_ragged_rows(5), ragged=("tok", "pts"))
    with pytest.raises(KeyError, match="'nope'"):
        source.gather(np.arange(2), {"nope": Pad()})
    clash = ArraySource({"a": Ragged.from_rows([np.ones(2)]), "a_length": np.ones(1)})
    with pytest.raises(ValueError, match="'a_length'"):
        clash.gather(np.arange(1), {"a": Pad()})


@pytest.mark.parametrize("process_index", [0, 1, 2])
def test_in_memory_pipeline_equals_the_per_example_one(process_index):
    rows = _ragged_rows(50)
    lengths = sequence_lengths(rows, "tok")
    kw = dict(batch_size=9, seed=5, pad={"tok": Pad(buckets=(8, 16)), "pts": Pad()},
              lengths=lengths, bucket_window=2, process_index=process_index, process_count=3)
    fast = Pipeline(ArraySource.from_source(rows, ragged=("tok", "pts")), **kw)
    slow = Pipeline(rows, **kw)
    for epoch, start in ((0, 0), (1, 0), (1, 4)):
        got, expected = list(fast.batches(epoch, start)), list(slow.batches(epoch, start))
        assert len(got) == len(expected) == 6 - start
        for a, b in zip(got, expected, strict=True):
            _assert_batches_equal(a, b)
    assert digest(fast.batches(0)) == digest(slow.batches(0)) != digest(slow.batches(1))


def test_ragged_cache_round_trip(tmp_path):
    rows = _ragged_rows(30)
    cache = tmp_path / "train.npz"
    first = ArraySource.from_source(rows, ragged=("tok", "pts"), cache=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ArraySource.from_source(rows, ragged=("tok", "pts"), cache=cache)
    for k in ("tok", "pts"):
        assert isinstance(again.arrays[k], Ragged)
        np.testing.assert_array_equal(again.arrays[k].values, first.arrays[k].values)
        np.testing.assert_array_equal(again.arrays[k].offsets, first.arrays[k].offsets)
    rows[-1] = {**rows[-1], "tok": rows[-1]["tok"][:-1]}  # one token fewer in the last example
    with pytest.warns(UserWarning, match="differs from the prepared data at example 29"):
        ArraySource.from_source(rows, ragged=("tok", "pts"), cache=cache)


def test_split_cache_only_for_whole_writable_tfds_splits(tmp_path):
    class Info:
        data_dir = str(tmp_path)

    class TfdsSource(list):
        dataset_info, split = Info(), "train"

    assert split_cache(TfdsSource()) == tmp_path / "train.npz"
    sliced = TfdsSource()
    sliced.split = "train[:10%]"
    assert split_cache(sliced) is None
    assert split_cache([{"x": 1}]) is None
