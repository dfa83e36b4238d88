"""BookCorpus builder: triples within boundaries, tail validation split, vocabulary, pipeline."""

import numpy as np
import pytest

from lnorm.data import bookcorpus as bc
from lnorm.data.common import DataError, prepare
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
