"""MR-like and CR-like sentiment probes in SentEval's layout, from the VADER release's snippets.

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vader
    python -m scripts.make_senteval_vader --sdist /tmp/vader/vaderSentiment-3.3.2.tar.gz --out DIR

Hutto & Gilbert's (ICWSM 2014) rated movie and Amazon snippets from the vaderSentiment 3.3.2
source distribution, labelled by the sign of their mean rating and written as SentEval's
MR/ and CR/ files (experiments/skipthought/vader.py says what they are, and are NOT). The
`senteval` stage builds them itself with `data.senteval_vader=true` (the folder made once under
the data directory); this script writes a folder of your own, e.g. with another `--margin`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.skipthought.vader import read_snippets, write_probes
from lnorm.data.common import DataError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", required=True, type=Path,
                        help="vaderSentiment-3.3.2.tar.gz (pip download --no-binary :all:)")
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="leave out snippets whose |mean rating| is at most this")
    args = parser.parse_args(argv)
    try:
        lines = write_probes(read_snippets(args.sdist), args.out, args.margin)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    print(f"wrote MR-like and CR-like probes (NOT MR/CR) to {args.out}; use them with\n"
          f"  data.senteval_dir={args.out.resolve()}  (or LNORM_SENTEVAL_DIR=... for "
          f"experiments.evaluate RUN_DIR --stage senteval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
