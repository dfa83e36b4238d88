"""Write a small synthetic corpus in a dataset's canonical on-disk format.

    python -m scripts.make_synthetic mnist --out /tmp/mnist_synth [--num-examples 2000] [--seed 0]

The files have the exact layout of the real distribution (docs/paper.md §5), so the real builders
and parsers read them; the content has structure a model can learn, so a trained model must beat
chance on it. Used by the tests and for demos without the real data.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

DATASETS: dict[str, str] = {
    "mnist": "lnorm.data.mnist",
    "binarized_mnist": "lnorm.data.binarized_mnist",
    "coco": "lnorm.data.coco",
    "cnn_qa": "lnorm.data.cnn_qa",
    "bookcorpus": "lnorm.data.bookcorpus",
    "senteval": "lnorm.data.senteval",
    "iam_ondb": "lnorm.data.iam_ondb",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument("--out", required=True, help="directory to write the files into")
    parser.add_argument("--num-examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS:
        parser.error(f"unknown dataset {args.dataset!r}; known: {', '.join(DATASETS)}")
    module = importlib.import_module(DATASETS[args.dataset])
    path = module.write_synthetic(args.out, num_examples=args.num_examples, seed=args.seed)
    print(f"wrote synthetic {args.dataset} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
