"""Sentence evaluation sets in their SentEval layout: MR, CR, SUBJ, MPQA, TREC and SICK.

One builder, one config per task. Files are read the way SentEval's loaders read them: the
classification sets and TREC as latin-1 (a decoding that never fails; the files are close to
ASCII), SICK as UTF-8. Sentences are stored as the file has them, whitespace-normalised and
case kept; `encode` tokenises them like BookCorpus (`bookcorpus.tokenize`: whitespace split,
lowercased by default to meet the lowercase skip-thoughts vocabulary). Blank lines in the
classification files are skipped (and counted in the log).

Evaluation splits: MR/CR/SUBJ/MPQA have one split `train` holding every sentence, to be split
by `cv_folds` (stratified 10-fold cross-validation, fixed by a seed); TREC has `train`
(train_5500) and `test` (TREC_10) with the 6 coarse classes as labels (the fine label kept as
text); SICK has `train`, `validation` (the trial set) and `test`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lnorm.data.bookcorpus import EOS_ID, tokenize
from lnorm.data.common import DataError, manual_root, where
from lnorm.data.pipeline import Pad, Pipeline
from lnorm.data.vocab import Vocab

TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
SICK_ENTAILMENT = ("NEUTRAL", "ENTAILMENT", "CONTRADICTION")
SICK_COLUMNS = ("pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment")
SPLIT_NAMES = {"trec": ("train", "test"), "sick": ("train", "validation", "test")}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Sentence evaluation sets: use SentEval's downloader (facebookresearch/SentEval,
`data/downstream/get_transfer_data.bash`) and point the manual directory at the resulting
`data/downstream` folder, which holds one folder per task:
  MR/rt-polarity.pos, MR/rt-polarity.neg          CR/custrev.pos, CR/custrev.neg
  SUBJ/subj.objective, SUBJ/subj.subjective        MPQA/mpqa.pos, MPQA/mpqa.neg
  TREC/train_5500.label, TREC/TREC_10.label
  SICK/SICK_train.txt, SICK/SICK_trial.txt, SICK/SICK_test_annotated.txt
Only the folder of the task being prepared is needed.
"""


@dataclasses.dataclass(eq=False)
class SentEvalConfig(tfds.core.BuilderConfig):
    """A task: its folder, its kind (`binary`, `trec`, `sick`) and its files: for `binary` one
    per class in label order (the class named by the file's suffix), otherwise one per split
    of `SPLIT_NAMES[kind]`."""

    folder: str = ""
    kind: str = "binary"
    files: tuple[str, ...] = ()
    encoding: str = "latin-1"

    def __post_init__(self):
        expected = 2 if self.kind == "binary" else len(SPLIT_NAMES.get(self.kind, ()))
        if self.kind not in ("binary", *SPLIT_NAMES) or len(self.files) != expected:
            raise ValueError(
                f"SentEvalConfig {self.name!r}: kind must be binary, trec or sick with 2 class "
                f"files or one file per split of SPLIT_NAMES; got {self.kind!r}, {self.files}"
            )


TASKS = {
    c.name: c
    for c in (
        SentEvalConfig(name="mr", folder="MR", files=("rt-polarity.neg", "rt-polarity.pos")),
        SentEvalConfig(name="cr", folder="CR", files=("custrev.neg", "custrev.pos")),
        SentEvalConfig(name="subj", folder="SUBJ", files=("subj.objective", "subj.subjective")),
        SentEvalConfig(name="mpqa", folder="MPQA", files=("mpqa.neg", "mpqa.pos")),
        SentEvalConfig(
            name="trec", folder="TREC", kind="trec", files=("train_5500.label", "TREC_10.label")
        ),
        SentEvalConfig(
            name="sick",
            folder="SICK",
            kind="sick",
            files=("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"),
            encoding="utf-8",
        ),
    )
}


class SentEval(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The sentence evaluation task of the config (`mr`, `cr`, `subj`, `mpqa`, `trec`, `sick`)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = list(TASKS.values())  # noqa: RUF012 (TFDS API)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        text = tfds.features.Text()
        if cfg.kind == "binary":
            classes = [f.rsplit(".", 1)[-1] for f in cfg.files]
            features = {"sentence": text, "label": tfds.features.ClassLabel(names=classes)}
        elif cfg.kind == "trec":
            label = tfds.features.ClassLabel(names=TREC_CLASSES)
            features = {"sentence": text, "label": label, "fine_label": text}
        else:
            features = {
                "pair_id": tfds.features.Scalar(dtype=np.int32),
                "sentence_a": text,
                "sentence_b": text,
                "relatedness": tfds.features.Scalar(dtype=np.float32),
                "entailment": tfds.features.ClassLabel(names=SICK_ENTAILMENT),
            }
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        names = [f"{cfg.folder}/{f}" for f in cfg.files]
        paths = [manual_root(dl_manager, names, MANUAL_DOWNLOAD_INSTRUCTIONS) / n for n in names]
        if cfg.kind == "binary":
            return {"train": self._generate_examples(paths)}
        return {
            split: self._generate_examples([path])
            for split, path in zip(SPLIT_NAMES[cfg.kind], paths, strict=True)
        }

    def _generate_examples(self, paths: list[Path]):
        cfg = self.builder_config
        for label, path in enumerate(paths):
            if cfg.kind == "binary":
                yield from _binary_examples(path, cfg.encoding, label)
            else:
                yield from (_trec_examples if cfg.kind == "trec" else _sick_examples)(
                    path, cfg.encoding
                )


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """`(line number, line)` without line endings; undecodable bytes name their line."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                yield line_no, raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{where(path, line_no)}: expected {encoding} text: {e}") from None


def _binary_examples(path: Path, encoding: str, label: int):
    blank = 0
    for line_no, line in _lines(path, encoding):
        if not line.strip():
            blank += 1
            continue
        yield f"{path.name}:{line_no}", {"sentence": " ".join(line.split()), "label": label}
    if blank:
        logging.info("%s: skipped %d blank lines", path, blank)


_TREC_LINE = re.compile(rf"^({'|'.join(TREC_CLASSES)}):(\S+)\s+(\S.*)$")


def _trec_examples(path: Path, encoding: str):
    for line_no, line in _lines(path, encoding):
        m = _TREC_LINE.match(line.strip())
        if m is None:
            raise DataError(
                f"{where(path, line_no)}: expected 'COARSE:fine question words' with COARSE one "
                f"of {', '.join(TREC_CLASSES)}; got {line[:80]!r}"
            )
        coarse, fine, words = m.groups()
        yield (
            f"{path.name}:{line_no}",
            {
                "sentence": " ".join(words.split()),
                "label": TREC_CLASSES.index(coarse),
                "fine_label": fine,
            },
        )


def _sick_examples(path: Path, encoding: str):
    lines = _lines(path, encoding)
    _, header = next(lines, (1, ""))
    columns = header.split("\t")
    if not set(SICK_COLUMNS) <= set(columns):
        raise DataError(
            f"{where(path, 1)}: expected a tab-separated header with {', '.join(SICK_COLUMNS)}; "
            f"got {columns}"
        )
    col = {c: columns.index(c) for c in SICK_COLUMNS}
    for line_no, line in lines:
        fields = line.split("\t")
        try:
            if len(fields) != len(columns):
                raise ValueError(f"{len(columns)} tab-separated fields, got {len(fields)}")
            example = {
                "pair_id": int(fields[col["pair_ID"]]),
                "sentence_a": " ".join(fields[col["sentence_A"]].split()),
                "sentence_b": " ".join(fields[col["sentence_B"]].split()),
                "relatedness": float(fields[col["relatedness_score"]]),
                "entailment": SICK_ENTAILMENT.index(fields[col["entailment_judgment"]]),
            }
            if not 1 <= example["relatedness"] <= 5:
                raise ValueError(f"relatedness_score in [1, 5], got {example['relatedness']}")
        except ValueError as e:
            raise DataError(
                f"{where(path, line_no)}: expected pair_ID (int), sentence_A, sentence_B, "
                f"relatedness_score (1-5), entailment_judgment ({'/'.join(SICK_ENTAILMENT)}): {e}"
            ) from None
        yield f"{path.name}:{line_no}", example


def load_split(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
    """A whole split in memory (these sets are small): text fields as object arrays of `str`,
    the others as numeric arrays, in the prepared dataset's fixed order."""
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(list(range(len(source))))
    out = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if isinstance(values[0], bytes):
            out[key] = np.array([v.decode("utf-8") for v in values], dtype=object)
        else:
            out[key] = np.asarray(values)
    return out


def cv_folds(labels: np.ndarray, *, num_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Stratified fold ids for k-fold cross-validation: each class's examples are shuffled with
    `seed` and dealt round-robin (continuing across classes), so every fold gets each class in
    proportion and the folds differ in size by at most one."""
    labels = np.asarray(labels)
    if len(labels) < num_folds:
        raise ValueError(f"{num_folds}-fold cross-validation needs >= {num_folds} examples")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int32)
    dealt = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        folds[members] = (dealt + np.arange(len(members))) % num_folds
        dealt += len(members)
    return folds


def encode(
    sentences: Sequence[str], vocab: Vocab, *, lowercase: bool = True, max_length: int | None = None
) -> list[np.ndarray]:
    """Token ids of each sentence (tokenised as for BookCorpus, optionally truncated)."""
    return [
        np.asarray(vocab.encode(tokenize(s, lowercase=lowercase)[:max_length]), np.int32)
        for s in sentences
    ]


def make_pipeline(
    sentences: Sequence[str],
    vocab: Vocab,
    *,
    batch_size: int,
    lowercase: bool = True,
    max_length: int | None = None,
    eos_id: int = EOS_ID,
    buckets: tuple[int, ...] | None = (8, 16, 24, 32),
) -> Pipeline:
    """Fixed-order batches for encoding `sentences` with a frozen model: `ids [B, L]` ending in
    `<eos>`, `ids_mask`, `ids_length`, and `index [B]`, each row's position in `sentences`
    (batches group sentences of similar length)."""
    ids = encode(sentences, vocab, lowercase=lowercase, max_length=max_length)
    eos = np.array([eos_id], np.int32)
    examples = [{"ids": np.concatenate([s, eos]), "index": i} for i, s in enumerate(ids)]
    return Pipeline(
        examples,
        batch_size=batch_size,
        shuffle=False,
        pad={"ids": Pad(buckets=buckets)},
        lengths=np.array([len(s) for s in ids]),
    )


_POSITIVE = ("good", "great", "wonderful", "lovely", "superb", "charming", "brilliant", "fun")
_NEGATIVE = ("bad", "awful", "dull", "boring", "terrible", "clumsy", "weak", "tedious")
_NOUNS = ("film", "plot", "camera", "battery", "story", "screen", "café", "actor", "song")
_TREC_TEMPLATES = {
    "ABBR": ("exp", "What does {} stand for ?"),
    "DESC": ("manner", "How did the {} work ?"),
    "ENTY": ("animal", "What animal is on the {} ?"),
    "HUM": ("ind", "Who made the {} ?"),
    "LOC": ("city", "Where is the {} ?"),
    "NUM": ("date", "When was the {} made ?"),
}


def write_synthetic(out_dir: str | os.PathLike, *, num_examples: int, seed: int) -> Path:
    """Writes every task's files in SentEval's layout under `out_dir` (`num_examples` lines
    per file): classification labels follow from sentiment or subjectivity words, TREC classes
    from the question template, SICK relatedness from the word overlap of the pair (and
    entailment from identity / negation). MR gets a latin-1 byte (`café`)."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)

    def phrase(words: Sequence[str]) -> str:
        noun, word = rng.choice(_NOUNS), rng.choice(words)
        return f"the {noun} is {word} and {rng.choice(_NOUNS)} was there ."

    for cfg in TASKS.values():
        (out / cfg.folder).mkdir(parents=True, exist_ok=True)
        if cfg.kind != "binary":
            continue
        for name, words in zip(cfg.files, (_NEGATIVE, _POSITIVE), strict=True):
            lines = [phrase(words) for _ in range(num_examples)]
            (out / cfg.folder / name).write_bytes("\n".join(lines).encode(cfg.encoding) + b"\n")
    for name in TASKS["trec"].files:
        lines = []
        for _ in range(num_examples):
            coarse = rng.choice(TREC_CLASSES)
            fine, template = _TREC_TEMPLATES[coarse]
            lines.append(f"{coarse}:{fine} {template.format(rng.choice(_NOUNS))}")
        (out / "TREC" / name).write_text("\n".join(lines) + "\n", encoding="latin-1")
    pair_id = 0
    for name in TASKS["sick"].files:
        rows = ["\t".join(SICK_COLUMNS)]
        for _ in range(num_examples):
            pair_id += 1
            a = list(rng.choice(_NOUNS + _POSITIVE, size=5, replace=False))
            keep = int(rng.integers(0, 6))
            b = a[:keep] + list(rng.choice(_NEGATIVE, size=5 - keep, replace=False))
            negate = keep == 5 and rng.random() < 0.5
            label = "CONTRADICTION" if negate else "ENTAILMENT" if keep == 5 else "NEUTRAL"
            text_b = " ".join(["not", *b] if negate else b)
            score = 1 + 4 * keep / 5
            rows.append(f"{pair_id}\t{' '.join(a)}\t{text_b}\t{score:.1f}\t{label}")
        (out / "SICK" / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out
