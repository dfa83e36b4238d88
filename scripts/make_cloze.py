"""Make the attentive reader's real-text cloze set in the CNN `.question` format.

    python -m scripts.make_cloze --out DIR [--books DIR] [--context-sentences 20] [--seed 0]

Writes `DIR/cnn/questions/{training,validation,test}/*.question` from four public-domain texts
(the Canterbury corpus that the `brotli==1.2.1` sdist ships; see
`experiments/attentive_reader/cloze.py` for what the questions are). The texts come from
`--books` if it holds them (md5-checked), else from `pip download` into `DIR/books`. Train on
the result with `data.manual_dir=DIR data.data_dir=OTHER_DIR`, or let `data.cloze=true` make
and use the same set under the data directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.attentive_reader.cloze import fetch_books, write_cloze
from lnorm.data.common import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder to write into")
    parser.add_argument("--books", type=Path, help="a folder holding the four texts")
    parser.add_argument("--context-sentences", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.out / "cnn" / "questions").exists():
        parser.error(f"{args.out / 'cnn' / 'questions'} exists; choose an empty --out")
    try:
        books = fetch_books(args.books or args.out / "books")
        counts = write_cloze(books, args.out, context_sentences=args.context_sentences,
                             seed=args.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(", ".join(f"{split}: {n} questions" for split, n in counts.items()))
    print(f"written to {args.out / 'cnn' / 'questions'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
