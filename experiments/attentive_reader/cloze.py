"""A small real-text cloze set in the CNN `.question` format, made from public-domain books: the
real-data check of the attentive reader where the CNN corpus cannot be had (docs/paper.md §5).

Source: the four English texts of the Canterbury compression corpus, which the PyPI source
distribution `brotli==1.2.1` ships as test data (`tests/testdata/`), fetched with `pip download`
and never installed, each md5-checked:
Lewis Carroll's *Alice's Adventures in Wonderland* (`alice29.txt`), Shakespeare's *As You Like
It* (`asyoulik.txt`), Milton's *Paradise Lost* (`plrabn12.txt`) and the Library of Congress's
*Workshop on Electronic Texts: Proceedings* (1992, a US government work; `lcet10.txt`).

Questions follow the named-entity part of the Children's Book Test (Hill et al. 2016), written
as the CNN release writes them: the context is `context_sentences` consecutive sentences, the
query the next sentence with one named entity replaced by `@placeholder` (one question for each
entity mentioned once in the query and at least once in the context). Named entities are found
without a tagger, per book: a word is a name when it is capitalised in at least
`MIN_CAPITALISED` places where case carries no signal of a sentence or verse-line start and
(nearly) never written in lower case; consecutive name words on one line form one entity
("mock turtle"). Every entity mention, in context and query, becomes `@entityN`, numbered per
question in a random order (seeded), with one `@entityN:Surface name` line each. Text is
lowercased and punctuation and clitics split off, as in the CNN release.

Splits: each book's sentences are cut into 80% / 10% / 10% consecutive regions (training,
validation, test), and a question uses sentences of one region only, so no held-out context is
seen in training.

    python -m scripts.make_cloze --out DIR      # then data.manual_dir=DIR (or data.cloze=true)
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from lnorm.data.cnn_qa import ENTITY_PREFIX, PLACEHOLDER, SPLITS
from lnorm.data.common import DataError, data_root, md5, write_folder_once

SDIST = "brotli==1.2.1"
SDIST_DIR = "brotli-1.2.1/tests/testdata/"
PIP_TIMEOUT_S = 300.0
MIN_CAPITALISED = 3  # capitalised occurrences (where case is informative) that make a name
MAX_LOWERCASE_FRACTION = 0.05  # of a name's occurrences
NOT_NAMES = frozenset({"i", "o", "oh", "ah", "ay", "mr", "mrs", "dr", "st"})
ROMAN = re.compile(r"[ivxlc]+")  # chapter and act numbers
CLITIC = re.compile(r"(.+?)(n't|'s|'m|'ll|'ve|'d|'re)", re.IGNORECASE)  # split off, as in CNN
SENTENCE_END = frozenset({".", "!", "?"})
REGIONS = (("training", 0.0, 0.8), ("validation", 0.8, 0.9), ("test", 0.9, 1.0))
_TOKEN = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*|\d+(?:[.,]\d+)*|[.!?,;:()]")


@dataclasses.dataclass(frozen=True)
class Book:
    """One text of the sdist: its title, md5, and the lines where its body starts and ends
    (regular expressions; the end line is left out, None: the end of the file)."""

    title: str
    md5: str
    start: str
    end: str | None


BOOKS = {
    "alice29.txt": Book("Lewis Carroll, Alice's Adventures in Wonderland",
                        "74c3b556c76ea0cfae111cdb64d08255", r"\s*CHAPTER I\s*", r"\s*THE END\s*"),
    "asyoulik.txt": Book("William Shakespeare, As You Like It",
                         "2183e4e23c67c1dcc6cb84e13d8863bf", r"ACT I\s*", None),
    "lcet10.txt": Book("Library of Congress, Workshop on Electronic Texts: Proceedings (1992)",
                       "5d69b132c7929dec190daa69f081d472", r"\s*INTRODUCTION\s*",
                       r"\s*Appendix III:\s+DIRECTORY OF PARTICIPANTS\s*"),
    "plrabn12.txt": Book("John Milton, Paradise Lost", "4655507b26054b80b98bac2b44d8200f",
                         r"Book I\s*", r"\[The End\].*"),
}


# ---------------------------------------------------------------------------- the books


def fetch_books(dest: str | os.PathLike) -> Path:
    """`dest` holding the four md5-checked texts: kept from an earlier call, else taken from
    the `brotli` sdist fetched with `pip download` (no install, no dependencies)."""
    dest = Path(dest)
    if all((dest / name).exists() for name in BOOKS):
        return check_books(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
               "--timeout", "15", "--retries", "1", SDIST, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise DataError(f"pip download {SDIST} took over {PIP_TIMEOUT_S:.0f} s") from e
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"pip download {SDIST} failed: {tail[0]}")
        extract_books(archives[0], Path(tmp) / "books")
        for name in BOOKS:
            os.replace(Path(tmp) / "books" / name, dest / name)
    return check_books(dest)


def extract_books(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copies the four texts out of the brotli sdist `archive` into `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            for name in BOOKS:
                src = tar.extractfile(SDIST_DIR + name)
                if src is None:
                    raise KeyError(SDIST_DIR + name)
                with src, open(dest / name, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, KeyError) as e:
        raise DataError(f"{archive}: expected the {SDIST} sdist holding {SDIST_DIR}"
                        f"{{{','.join(BOOKS)}}} ({e})") from None
    return dest


def check_books(folder: Path) -> Path:
    for name, book in BOOKS.items():
        got = md5(folder / name)
        if got != book.md5:
            raise DataError(f"{folder / name}: md5 {got}, expected {book.md5} (not the text "
                            f"{SDIST} ships)")
    return folder


def body(text: str, book: Book, name: str) -> list[str]:
    """The lines of the book's body (front matter and licence text cut off)."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if re.fullmatch(book.start, line)), None)
    if start is None:
        raise DataError(f"{name}: no line matching {book.start!r} (the start of the body)")
    if book.end is None:
        return lines[start:]
    end = next((i for i in range(start, len(lines)) if re.fullmatch(book.end, lines[i])), None)
    if end is None:
        raise DataError(f"{name}: no line matching {book.end!r} (the end of the body)")
    return lines[start:end]


# ---------------------------------------------------------------------------- tokens, names


@dataclasses.dataclass(frozen=True)
class Token:
    text: str  # as written
    informative: bool  # capitalisation tells a name here (not a sentence or line start)
    line_start: bool  # first token of its line: a name never runs on across lines


def sentences(lines: Sequence[str]) -> list[list[Token]]:
    """Tokenised sentences (ended by . ! ?). A play's speaker tag ("ROSALIND<tab>...") becomes
    "ROSALIND :" before the speech; clitics ("'s", "n't", "'ll", ...) are split off, as in the
    CNN release."""
    out: list[list[Token]] = []
    current: list[Token] = []
    for line in lines:
        line = re.sub(r"^([A-Z][A-Z ]*[A-Z])\t", r"\1 : ", line)
        words = []
        for word in _TOKEN.findall(line):
            clitic = CLITIC.fullmatch(word)
            words += [clitic[1], clitic[2]] if clitic else [word]
        for j, word in enumerate(words):
            previous = current[-1].text if current else "."
            after_word = previous[0].isalnum() or previous == ","
            current.append(Token(word, informative=j > 0 and after_word, line_start=j == 0))
            if word in SENTENCE_END:
                out.append(current)
                current = []
    if current:
        out.append(current)
    return [s for s in out if any(t.text[0].isalpha() for t in s)]


def name_words(sents: Sequence[Sequence[Token]]) -> set[str]:
    """Lowercased words that are names in this book (module docstring)."""
    capitalised, lower = collections.Counter(), collections.Counter()
    for sent in sents:
        for token in sent:
            if not token.text[0].isalpha():
                continue
            key = token.text.lower()
            if token.text.islower():
                lower[key] += 1
            elif token.informative:
                capitalised[key] += 1
    return {
        w for w, n in capitalised.items()
        if n >= MIN_CAPITALISED and w not in NOT_NAMES and not ROMAN.fullmatch(w)
        and "'" not in w and lower[w] <= MAX_LOWERCASE_FRACTION * (n + lower[w])
    }


@dataclasses.dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]  # lowercased tokens
    mentions: tuple[tuple[int, int, str, str], ...]  # (start, stop, entity key, surface)


def annotate(sent: Sequence[Token], names: set[str]) -> Sentence:
    """Finds the entity mentions: maximal runs of capitalised name words."""
    mentions, i = [], 0
    while i < len(sent):
        j = i
        while (j < len(sent) and sent[j].text[0].isupper() and sent[j].text.lower() in names
               and (j == i or not sent[j].line_start)):
            j += 1
        if j > i:
            surface = " ".join(t.text for t in sent[i:j])
            mentions.append((i, j, surface.lower(), surface))
        i = max(j, i + 1)
    return Sentence(tuple(t.text.lower() for t in sent), tuple(mentions))


# ---------------------------------------------------------------------------- questions


def _render(sent: Sentence, ids: dict[str, int], blank: int | None = None) -> list[str]:
    out, pos = [], 0
    for k, (start, stop, key, _) in enumerate(sent.mentions):
        out += sent.words[pos:start]
        out.append(PLACEHOLDER if k == blank else f"{ENTITY_PREFIX}{ids[key]}")
        pos = stop
    return out + list(sent.words[pos:])


def questions(
    sents: Sequence[Sentence],
    *,
    context_sentences: int,
    max_query_tokens: int,
    rng: np.random.Generator,
) -> Iterator[tuple[int, int, str]]:
    """`(query sentence index, mention index, .question text without the URL line)`: one
    question for each entity mentioned once in a query sentence and at least once in the
    `context_sentences` sentences before it, for queries of at most `max_query_tokens` tokens."""
    for i in range(context_sentences, len(sents)):
        query, context = sents[i], sents[i - context_sentences : i]
        if len(query.words) > max_query_tokens:
            continue
        in_context = {m[2] for s in context for m in s.mentions}
        counts = collections.Counter(m[2] for m in query.mentions)
        surfaces: dict[str, str] = {}
        for s in (*context, query):
            for _, _, key, surface in s.mentions:
                surfaces.setdefault(key, surface)
        for blank, (_, _, key, _) in enumerate(query.mentions):
            if counts[key] != 1 or key not in in_context:
                continue
            ids = dict(zip(surfaces, rng.permutation(len(surfaces)).tolist(), strict=True))
            lines = [
                " ".join(w for s in context for w in _render(s, ids)),
                "",
                " ".join(_render(query, ids, blank)),
                "",
                f"{ENTITY_PREFIX}{ids[key]}",
                "",
                *(f"{ENTITY_PREFIX}{n}:{surfaces[k]}"
                  for k, n in sorted(ids.items(), key=lambda kv: kv[1])),
            ]
            yield i, blank, "\n".join(lines) + "\n"


def write_cloze(
    books_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    context_sentences: int = 20,
    max_query_tokens: int = 48,
    seed: int = 0,
) -> dict[str, int]:
    """Writes `out_dir/cnn/questions/{training,validation,test}/*.question` from the four texts
    in `books_dir`; returns the number of questions per split."""
    out_dir = Path(out_dir)
    counts = dict.fromkeys(SPLITS.values(), 0)
    for b, (name, book) in enumerate(BOOKS.items()):
        path = Path(books_dir) / name
        tokens = sentences(body(path.read_text(encoding="ascii"), book, str(path)))
        names = name_words(tokens)
        sents = [annotate(s, names) for s in tokens]
        rng = np.random.default_rng([seed, b])
        for split, lo, hi in REGIONS:
            start = round(lo * len(sents))
            region = sents[start : round(hi * len(sents))]
            split_dir = out_dir / "cnn" / "questions" / split
            split_dir.mkdir(parents=True, exist_ok=True)
            for i, k, text in questions(region, context_sentences=context_sentences,
                                        max_query_tokens=max_query_tokens, rng=rng):
                i += start  # the query's sentence number in the book
                url = f"https://pypi.org/project/brotli/1.2.1/#{name}/{split}/{i}/{k}"
                stem = f"{Path(name).stem}-{i:05d}-{k}"
                (split_dir / f"{stem}.question").write_text(f"{url}\n\n{text}", encoding="utf-8")
                counts[split] += 1
    return counts


def cloze_corpus(data_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    """The cloze set for `data.cloze=true`: written once (the books fetched if needed) into
    `<data_dir>/cloze/brotli-1.2.1/files`, via a temporary folder renamed when complete.
    Returns `(files, prepared_data_dir)`, the latter a TFDS data directory of its own so that
    the set is never mistaken for the CNN corpus prepared under `data_dir`."""
    root = data_root(data_dir) / "cloze" / SDIST.replace("==", "-")
    files = root / "files"
    if not files.exists():
        books = fetch_books(root / "books")
        write_folder_once(files, lambda out: write_cloze(books, out))
    return files, root / "prepared"
