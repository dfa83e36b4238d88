"""SentEval builder: each task's layout and encoding, evaluation splits, CV folds, pipeline."""

import numpy as np
import pytest

from lnorm.data import senteval as se
from lnorm.data.common import DataError, prepare
from lnorm.data.pipeline import bucket_length
from lnorm.data.vocab import Vocab

SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    for folder in ("MR", "TREC", "SICK"):
        (root / folder).mkdir()
    # latin-1 bytes (0xe9 = é), a blank line to skip, irregular whitespace to normalise
    (root / "MR" / "rt-polarity.pos").write_bytes(b"a caf\xe9 gem .\n\nsimply  superb\t!\n")
    (root / "MR" / "rt-polarity.neg").write_bytes(b"dull and flat .\n")
    (root / "TREC" / "train_5500.label").write_bytes(
        b"DESC:manner How did serfdom develop ?\nNUM:date When did Hawaii become a state ?\n"
    )
    (root / "TREC" / "TREC_10.label").write_bytes(b"HUM:ind Who wrote Hamlet ?\n")
    rows = {
        "SICK_train.txt": "1\tA boy runs\tA kid runs\t4.5\tENTAILMENT\n",
        "SICK_trial.txt": "7\tA cat sits\tNo cat sits\t3.6\tCONTRADICTION\n",
        "SICK_test_annotated.txt": "9\tA man cooks\tA dog sleeps\t1.2\tNEUTRAL\n",
    }
    for name, row in rows.items():
        (root / "SICK" / name).write_text(SICK_HEADER + row, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _records(builder, split):
    data = se.load_split(builder, split)
    return sorted(zip(*(data[k].tolist() for k in sorted(data)), strict=True))


def test_mr_latin1_blank_lines_and_labels(manual, data_dir):
    builder = prepare(se.SentEval, data_dir, manual_dir=manual, config="mr")
    assert list(builder.as_data_source()) == ["train"]  # all of it: 10-fold CV splits it
    assert builder.info.features["label"].names == ["neg", "pos"]
    assert _records(builder, "train") == [
        (0, "dull and flat ."),
        (1, "a café gem ."),
        (1, "simply superb !"),
    ]


def test_trec_coarse_labels_and_splits(manual, data_dir):
    builder = prepare(se.SentEval, data_dir, manual_dir=manual, config="trec")
    desc, num, hum = (se.TREC_CLASSES.index(c) for c in ("DESC", "NUM", "HUM"))
    assert _records(builder, "train") == [
        ("date", num, "When did Hawaii become a state ?"),
        ("manner", desc, "How did serfdom develop ?"),
    ]
    assert _records(builder, "test") == [("ind", hum, "Who wrote Hamlet ?")]


def test_sick_train_trial_test(manual, data_dir):
    builder = prepare(se.SentEval, data_dir, manual_dir=manual, config="sick")
    src = builder.as_data_source()
    assert sorted(src) == ["test", "train", "validation"]
    trial = se.load_split(builder, "validation")
    assert trial["pair_id"].tolist() == [7]
    assert trial["sentence_a"].tolist() == ["A cat sits"]
    assert trial["sentence_b"].tolist() == ["No cat sits"]
    assert trial["relatedness"].tolist() == [pytest.approx(3.6)]
    assert trial["entailment"].tolist() == [se.SICK_ENTAILMENT.index("CONTRADICTION")]
    assert se.load_split(builder, "test")["relatedness"].tolist() == [pytest.approx(1.2)]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("QUESTION How are you ?", "expected 'COARSE:fine question words'"),
        ("FOO:bar What ?", "COARSE one of ABBR"),
        ("DESC:manner", "expected 'COARSE:fine"),
    ],
)
def test_trec_malformed_line_names_file_and_line(tmp_path, line, expected):
    path = tmp_path / "train_5500.label"
    path.write_text(f"HUM:ind Who ?\n{line}\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"train_5500\.label:2: ") as e:
        list(se._trec_examples(path, "latin-1"))
    assert expected in str(e.value)


@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        ("pair\tsentence_A\n1\ta\n", ":1: ", "header with pair_ID"),
        (SICK_HEADER + "1\ta\tb\t4.5\n", ":2: ", "5 tab-separated fields, got 4"),
        (SICK_HEADER + "1\ta\tb\tsix\tNEUTRAL\n", ":2: ", "could not convert"),
        (SICK_HEADER + "1\ta\tb\t4.5\tMAYBE\n", ":2: ", "ENTAILMENT/CONTRADICTION"),
        (SICK_HEADER + "1\ta\tb\t4.5\tNEUTRAL\nx\ta\tb\t9\tNEUTRAL\n", ":3: ", "pair_ID (int)"),
        (SICK_HEADER + "1\ta\tb\t9\tNEUTRAL\n", ":2: ", "in [1, 5], got 9.0"),
    ],
)
def test_sick_malformed_rows(tmp_path, text, where, expected):
    path = tmp_path / "SICK_train.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=f"SICK_train\\.txt{where}") as e:
        list(se._sick_examples(path, "utf-8"))
    assert expected in str(e.value)


def test_malformed_file_fails_preparation(tmp_path):
    (tmp_path / "TREC").mkdir()
    (tmp_path / "TREC" / "train_5500.label").write_text("HUM:ind Who ?\nno label here\n")
    (tmp_path / "TREC" / "TREC_10.label").write_text("HUM:ind Who ?\n")
    with pytest.raises(DataError, match=r"train_5500\.label:2: expected 'COARSE:fine"):
        prepare(se.SentEval, tmp_path / "data", manual_dir=tmp_path, config="trec")


def test_missing_files_give_instructions(tmp_path):
    (tmp_path / "CR").mkdir()
    (tmp_path / "CR" / "custrev.pos").write_text("great\n")
    with pytest.raises(DataError, match=r"missing files.*CR/custrev\.neg") as e:
        prepare(se.SentEval, tmp_path / "data", manual_dir=tmp_path, config="cr")
    assert "get_transfer_data.bash" in str(e.value)


def test_cv_folds_stratified_deterministic():
    labels = np.array([0] * 37 + [1] * 23)
    folds = se.cv_folds(labels, num_folds=10, seed=4)
    np.testing.assert_array_equal(folds, se.cv_folds(labels, num_folds=10, seed=4))
    assert not np.array_equal(folds, se.cv_folds(labels, num_folds=10, seed=5))
    assert sorted(np.bincount(folds, minlength=10)) == [6] * 10
    for c, n in ((0, 37), (1, 23)):  # each class spread as evenly as 10 folds allow
        per_fold = np.bincount(folds[labels == c], minlength=10)
        assert per_fold.min() == n // 10 and per_fold.max() == -(-n // 10)
    with pytest.raises(ValueError, match="10-fold"):
        se.cv_folds(labels[:9])


def test_synthetic_round_trip_and_learnable(tmp_path_factory):
    raw = se.write_synthetic(tmp_path_factory.mktemp("syn"), num_examples=40, seed=1)
    data_dir = tmp_path_factory.mktemp("data")
    sizes = {}
    for task in se.TASKS:
        builder = prepare(se.SentEval, data_dir, manual_dir=raw, config=task)
        sizes[task] = {k: len(v) for k, v in builder.as_data_source().items()}
        if task == "mpqa":  # classification: the label follows from a sentiment word
            data = se.load_split(builder, "train")
            positive = [any(w in s.split() for w in se._POSITIVE) for s in data["sentence"]]
            np.testing.assert_array_equal(positive, data["label"] == 1)
        if task == "sick":  # relatedness grows with the word overlap of the pair
            data = se.load_split(builder, "train")
            overlap = [
                len(set(a.split()) & set(b.split()))
                for a, b in zip(data["sentence_a"], data["sentence_b"], strict=True)
            ]
            assert np.corrcoef(overlap, data["relatedness"])[0, 1] > 0.99
    binary = {"train": 80}
    assert sizes == {
        "mr": binary,
        "cr": binary,
        "subj": binary,
        "mpqa": binary,
        "trec": {"train": 40, "test": 40},
        "sick": {"train": 40, "validation": 40, "test": 40},
    }


def test_pipeline_encodes_every_sentence_once_in_padded_batches():
    sentences = ["The cat sat .", "a dog", "Unknown WORDS here and there and more .", "cat"]
    vocab = Vocab.build([["the", "cat", "sat", ".", "a", "dog"]], specials=("<eos>",))
    pipe = se.make_pipeline(sentences, vocab, batch_size=3, buckets=(4, 8))
    seen = []
    for batch in pipe.batches(0):
        ids, mask, length = batch["ids"], batch["ids_mask"], batch["ids_length"]
        assert ids.shape[1] == bucket_length(int(length.max()), (4, 8))  # 9 tokens -> 16
        np.testing.assert_array_equal(mask, np.arange(ids.shape[1]) < length[:, None])
        for row, i in enumerate(batch["index"]):
            expected = [*se.encode([sentences[i]], vocab)[0].tolist(), vocab.index["<eos>"]]
            assert ids[row, : length[row]].tolist() == expected
        seen += batch["index"].tolist()
    assert sorted(seen) == [0, 1, 2, 3]
    # lowercased whitespace tokens, unknown words -> <unk>, optional truncation
    assert vocab.decode(se.encode(["The CAT zebra"], vocab)[0]) == ["the", "cat", "<unk>"]
    assert se.encode(["the cat sat"], vocab, max_length=2)[0].tolist() == vocab.encode(
        ["the", "cat"]
    )
