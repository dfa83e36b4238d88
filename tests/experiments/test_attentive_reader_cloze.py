"""The real-text cloze set: tokens and sentences, the name finder, the questions in the CNN
format (read back through the real builder), splits without shared sentences, the sdist and md5
checks. A short hand-written book stands in for the four texts (no network)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from experiments.attentive_reader import cloze
from lnorm.data import cnn_qa
from lnorm.data.common import DataError, prepare
from lnorm.data.vocab import load_vocab

NAMES = ["Alice", "Rabbit", "Queen", "Dinah"]
FRONT = "THE TITLE\n\nsome front matter, to be cut.\n\n  CHAPTER I\n\n"


def _book(sentences: int = 60, seed: int = 0) -> str:
    """Prose where the four names (and "White Rabbit") recur mid-sentence; every sentence also
    starts with a capitalised common word, and "The" is both ways, as in real text."""
    rng = np.random.default_rng(seed)
    verbs = ["saw", "met", "followed", "called", "thanked", "asked"]
    lines = []
    for i in range(sentences):
        a, b = rng.choice(NAMES, size=2, replace=False)
        subject = "the White Rabbit" if i % 7 == 3 else a
        lines.append(f"  Then {subject} {rng.choice(verbs)} {b}'s cat, and the {b} didn't "
                     f"mind.\nSo it went on, said {a}.")
    return FRONT + "\n".join(lines) + "\n  THE END\n\nlicence text.\n"


def _tokens(sent: list[cloze.Token]) -> list[str]:
    return [t.text for t in sent]


def test_sentences_tokens_clitics_and_speaker_tags():
    sents = cloze.sentences(["  `Oh dear!' said the Rabbit. I'll be", "late, I didn't know.",
                             "ROSALIND\tWhy, Celia's here?"])
    assert [_tokens(s) for s in sents] == [
        ["Oh", "dear", "!"], ["said", "the", "Rabbit", "."],
        ["I", "'ll", "be", "late", ",", "I", "did", "n't", "know", "."],
        ["ROSALIND", ":", "Why", ",", "Celia", "'s", "here", "?"]]
    informative = {t.text: t.informative for s in sents for t in s}
    # Case tells a name only after a word or a comma on the same line.
    assert informative["Rabbit"] and not informative["Oh"] and not informative["late"]
    assert not informative["ROSALIND"] and not informative["Why"] and informative["Celia"]


def test_names_are_words_capitalised_where_case_is_informative():
    sents = cloze.sentences(cloze.body(_book(), cloze.Book("t", "", r"\s*CHAPTER I\s*",
                                                           r"\s*THE END\s*"), "book"))
    names = cloze.name_words(sents)
    assert names == {"alice", "rabbit", "queen", "dinah", "white"}  # not Then, So, The
    annotated = cloze.annotate(cloze.sentences(["he saw the White Rabbit and", "Alice there."])[0],
                               names)
    assert [(m[2], m[3]) for m in annotated.mentions] == [("white rabbit", "White Rabbit"),
                                                          ("alice", "Alice")]
    assert annotated.words[:3] == ("he", "saw", "the")


def test_body_cuts_front_matter_and_licence_and_names_a_missing_marker():
    book = cloze.Book("t", "", r"\s*CHAPTER I\s*", r"\s*THE END\s*")
    lines = cloze.body(_book(), book, "b.txt")
    assert lines[0].strip() == "CHAPTER I" and "licence" not in "".join(lines)
    with pytest.raises(DataError, match=r"b\.txt: no line matching .*THE END"):
        cloze.body("  CHAPTER I\nno end\n", book, "b.txt")


@pytest.fixture
def one_book(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(cloze, "BOOKS", {"tale.txt": cloze.Book(
        "A tale", "", r"\s*CHAPTER I\s*", r"\s*THE END\s*")})
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "tale.txt").write_text(_book(120), encoding="ascii")
    return tmp_path / "books"


def test_questions_are_valid_cnn_files_read_by_the_builder(one_book, tmp_path):
    counts = cloze.write_cloze(one_book, tmp_path / "cloze", context_sentences=6)
    assert counts["training"] > 4 * counts["validation"] > 0 and counts["test"] > 0
    root = tmp_path / "cloze" / "cnn" / "questions"
    files = sorted(root.rglob("*.question"))
    assert sum(counts.values()) == len(files)
    for path in files:
        q = cnn_qa.parse_question(path)  # URL, one @placeholder, answer in context, entities
        assert q.url.startswith("https://pypi.org/project/brotli/1.2.1/#tale.txt/")
        assert all(t == t.lower() for t in q.context + q.query)
        assert set(q.entities) == {f"@entity{n}" for n in q.entity_numbers()}
        assert set(q.entities.values()) <= {*NAMES, "White Rabbit"}
    # A question's sentences all lie in its split's region: query indices never cross.
    regions = {split: sorted(int(p.stem.split("-")[1]) for p in (root / split).glob("*"))
               for split in ("training", "validation", "test")}
    assert max(regions["training"]) < min(regions["validation"]) - 6
    assert max(regions["validation"]) < min(regions["test"]) - 6
    builder = prepare(cnn_qa.CnnQa, tmp_path / "prepared", manual_dir=tmp_path / "cloze")
    vocab = load_vocab(builder)
    assert builder.info.splits["train"].num_examples == counts["training"]
    assert "white" not in vocab and "alice" not in vocab  # names only as entity markers


def test_one_question_per_entity_mentioned_once_in_the_query_and_in_the_context():
    sents = [cloze.annotate(s, {"ann", "bob", "cy"}) for s in cloze.sentences(
        ["x saw Ann .", "x saw Bob .", "x met Ann and Bob and Cy and Bob ."])]
    made = list(cloze.questions(sents, context_sentences=2, max_query_tokens=20,
                                rng=np.random.default_rng(0)))
    assert [(i, k) for i, k, _ in made] == [(2, 0)]  # Bob twice, Cy not in the context
    context, _, query, _, answer, _, *entities = made[0][2].rstrip("\n").split("\n")
    ann = next(e.split(":")[0] for e in entities if e.endswith(":Ann"))
    assert query.split()[:4] == ["x", "met", "@placeholder", "and"]
    assert answer == ann and ann in context.split() and query.count("@entity") == 3
    assert not list(cloze.questions(sents, context_sentences=2, max_query_tokens=5,
                                    rng=np.random.default_rng(0)))  # query too long


def _sdist(path: Path, texts: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in texts.items():
            info = tarfile.TarInfo(cloze.SDIST_DIR + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_texts_come_out_of_the_sdist_and_are_md5_checked(tmp_path, monkeypatch):
    texts = {name: f"text of {name}\n".encode() for name in cloze.BOOKS}
    out = cloze.extract_books(_sdist(tmp_path / "b.tar.gz", texts), tmp_path / "books")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == texts
    with pytest.raises(DataError, match=r"alice29\.txt: md5 .* expected 74c3b556"):
        cloze.fetch_books(out)  # present already: checked, not fetched again
    one = dict(list(texts.items())[:1])
    with pytest.raises(DataError, match=r"expected the brotli==1\.2\.1 sdist"):
        cloze.extract_books(_sdist(tmp_path / "c.tar.gz", one), tmp_path / "other")
