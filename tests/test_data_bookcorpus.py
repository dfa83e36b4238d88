"""BookCorpus builder: triples within boundaries, tail validation split, vocabulary, pipeline."""

import numpy as np
import pytest
from test_data_cnn_qa import _assert_same_batches  # tests/ is on sys.path

from lnorm.data import bookcorpus as bc
from lnorm.data.common import DataError, prepare
from lnorm.data.pipeline import Pad, Pipeline, digest, sequence_lengths
from lnorm.data.vocab import Vocab, load_vocab

P1 = "A b c\nd e\nf\n\ng h\ni\nj k l m\n"  # two paragraphs (blank line between)
P2 = "n o\np\nq\n"  # a file end is a boundary too


def _decode(vocab, example):
    return tuple(" ".join(vocab.decode(example[k])) for k in bc.FIELDS)


@pytest.fixture(scope="module")
def fixture_builder(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    (raw / "p1.txt").write_text(P1)
    (raw / "p2.txt").write_text(P2)
    cfg = bc.BookCorpusConfig(
        name="fixture", files=("p1.txt", "p2.txt"), max_length=3, validation_size=1
    )
    return prepare(bc.BookCorpus, tmp_path_factory.mktemp("data"), manual_dir=raw, config=cfg)


def test_fixture_parsed_exactly(fixture_builder):
    src = fixture_builder.as_data_source()
    vocab = load_vocab(fixture_builder)
    train = sorted(_decode(vocab, src["train"][i]) for i in range(len(src["train"])))
    # lowercased, truncated to max_length=3 words, no triple across a blank line or a file end
    assert train == [("a b c", "d e", "f"), ("g h", "i", "j k l")]
    # the last triple is validation; its words never occur in training, so they are <unk>
    assert [_decode(vocab, src["validation"][0])] == [("<unk> <unk>", "<unk>", "<unk>")]
    assert vocab.tokens[:3] == ["<pad>", "<unk>", "<eos>"]
    assert set(vocab.tokens[3:]) == set("abcdefghijklm")  # train sentences only, untruncated


def test_split_index_walks_runs_backwards():
    # runs of 5 and 4 sentences hold 3 and 2 triples
    assert bc._split_index([5, 4], 2) == 5  # exactly the last run
    assert bc._split_index([5, 4], 3) == 2  # sentences 2-4 of the first run give one more
    assert bc._split_index([5, 4], 5) == 0


@pytest.mark.parametrize(
    ("size", "count"), [(0.5, 5), (0.04, 0), (3, 3), (3.0, 3), (10, 10), (2.5, None), (0, 0)]
)
def test_validation_count(size, count):
    if count is None or not 1 <= count < 10:
        with pytest.raises(DataError, match="validation_size"):
            bc._validation_count(size, 10, [])
    else:
        assert bc._validation_count(size, 10, []) == count


def test_drop_long_leaves_out_triples_like_the_release(tmp_path):
    (tmp_path / "a.txt").write_text("a\nb b b b\nc\nd\n")
    vocab = Vocab.build([["a", "b", "c", "d"]], specials=(bc.EOS,))

    def examples(drop_long):
        cfg = bc.BookCorpusConfig(name=f"d{drop_long}", max_length=3, drop_long=drop_long)
        builder = bc.BookCorpus(data_dir=str(tmp_path), config=cfg)
        return list(builder._generate_examples([tmp_path / "a.txt"], vocab, 0, None))

    assert examples(drop_long=True) == []  # both triples hold the 4-word sentence
    examples = examples(drop_long=False)
    assert [k for k, _ in examples] == ["a.txt:2", "a.txt:3"]  # keyed by the middle line
    assert vocab.decode(examples[0][1]["cur"]) == ["b", "b", "b"]


@pytest.fixture(scope="module")
def synthetic_builder(tmp_path_factory):
    raw = bc.write_synthetic(tmp_path_factory.mktemp("syn"), num_examples=200, seed=3)
    cfg = bc.BookCorpusConfig(name="synthetic", validation_size=0.1)
    return prepare(bc.BookCorpus, tmp_path_factory.mktemp("data"), manual_dir=raw, config=cfg)


def test_synthetic_round_trip_through_pipeline(synthetic_builder):
    src = synthetic_builder.as_data_source()
    vocab = load_vocab(synthetic_builder)
    total = len(src["train"]) + len(src["validation"])
    assert len(src["validation"]) == round(0.1 * total)
    pipe = bc.make_pipeline(src["train"], batch_size=8, seed=0, bucket_by_length=True)
    rows = 0
    for batch in pipe.batches(epoch=0):
        for k in bc.FIELDS:
            ids, mask, length = batch[k], batch[f"{k}_mask"], batch[f"{k}_length"]
            assert ids.shape[1] in (8, 16, 24, 32)
            np.testing.assert_array_equal(mask, np.arange(ids.shape[1]) < length[:, None])
            np.testing.assert_array_equal(ids[np.arange(len(ids)), length - 1], bc.EOS_ID)
            assert np.all(ids[~mask] == 0)
        for i in range(len(batch["cur"])):
            prev, cur, nxt = (
                vocab.decode(batch[k][i, : batch[f"{k}_length"][i] - 1]) for k in bc.FIELDS
            )
            # one story per triple (no blank line crossed), and the next sentence starts
            # where the current one ends: predictable from the current sentence
            assert prev[1] == cur[1] == nxt[1]
            assert prev[-2] == cur[5] and cur[-2] == nxt[5]
        rows += len(batch["cur"])
    assert rows == len(src["train"])


def test_missing_files_give_instructions(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataError, match=r"books_large_p1\.txt") as e:
        prepare(bc.BookCorpus, tmp_path / "data", manual_dir=tmp_path / "manual")
    assert "one tokenised sentence a line" in str(e.value)
    (tmp_path / "manual" / "books_large_p1.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match=r"missing files.*books_large_p2\.txt") as e:
        prepare(bc.BookCorpus, tmp_path / "data", manual_dir=tmp_path / "manual")
    assert "one tokenised sentence a line" in str(e.value)


def test_bad_encoding_names_file_and_line(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"ok line\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"a\.txt:2: expected UTF-8"):
        list(bc._sentences([tmp_path / "a.txt"], lowercase=True))


# The in-memory pipeline against the per-example one it replaced, and pinned output.

PIPELINES = {  # name: (split, make_pipeline options)
    "train": ("train", dict(batch_size=8, seed=2, bucket_by_length=True, drop_remainder=True)),
    "plain": ("train", dict(batch_size=8)),
    "eval": ("validation", dict(batch_size=5, shuffle=False, bucket_by_length=True)),
}
# `digest` of epochs 0 and 1 of each pipeline on the synthetic corpus, computed with the
# per-example pipeline (before batches were read from memory): the same seed must keep giving
# the same batches, or a resumed run would see other data than the one it continues.
PINNED = {"train": "834a4beef7b5843d", "plain": "6981439b83f9933a", "eval": "5bcaf1bcddfb1f7c",
          "train/0of2": "6c670836ec9c71c9", "train/1of2": "8f7cd5433421c05c"}


def _epochs(pipeline, epochs=(0, 1)):
    return [batch for epoch in epochs for batch in pipeline.batches(epoch)]


def _reference(source, *, batch_size, seed=0, shuffle=True, drop_remainder=False,
               bucket_by_length=False, process_index=0, process_count=1):
    """The per-example pipeline: each triple read, given its `<eos>` and collated on its own."""
    eos = np.array([bc.EOS_ID], np.int32)
    return Pipeline(
        source, batch_size=batch_size, seed=seed, shuffle=shuffle,
        drop_remainder=drop_remainder,
        transform=lambda e: {k: np.concatenate([e[k], eos]) for k in bc.FIELDS},
        pad={k: Pad(buckets=(8, 16, 24, 32)) for k in bc.FIELDS},
        lengths=sequence_lengths(source, "cur") if bucket_by_length else None,
        process_index=process_index, process_count=process_count)


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_equals_the_per_example_reference_and_its_pinned_digest(synthetic_builder, name):
    split, options = PIPELINES[name]
    source = synthetic_builder.as_data_source(split)
    got = _epochs(bc.make_pipeline(source, **options))
    _assert_same_batches(got, _epochs(_reference(source, **options)))
    assert digest(got) == PINNED[name]


@pytest.mark.parametrize("index", [0, 1])
def test_each_process_reads_its_share_of_the_reference_batches(synthetic_builder, monkeypatch,
                                                               index):
    import jax

    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    split, options = PIPELINES["train"]
    source = synthetic_builder.as_data_source(split)
    got = _epochs(bc.make_pipeline(source, **options))
    whole = _epochs(_reference(source, **options))
    _assert_same_batches(got, [{k: v[4 * index : 4 * index + 4] for k, v in b.items()}
                               for b in whole])
    assert digest(got) == PINNED[f"train/{index}of2"]
