"""IAM-OnDB online handwriting: pen strokes of one text line with its transcription.

Input: `lineStrokes/<a01>/<a01-000>/<a01-000u-01>.xml` (`StrokeSet/Stroke/Point`, attributes
`x`, `y`, `time`) and `ascii/<a01>/<a01-000>/<a01-000u>.txt`, whose non-blank lines after
`CSR:` transcribe the form's text lines in order (stroke file `-01` is the first).

Preprocessing as in Graves (2013) and its common reimplementations: one row per point,
`(dx, dy, pen_up)` with the offset from the previous point (zero for a line's first point)
and `pen_up = 1` at each stroke's last point. `y` is negated (`flip_y`) so that up is up:
IAM's tablet coordinates grow downwards. Offsets are divided by the training set's per-axis
standard deviation (or by the constant `scale`), without centring, which would add a drift to
every point; the divisors are stored in `stats.json` to map samples back to pen units. Lines
longer than `max_length` points are dropped (`max_length=None` keeps all).

The character vocabulary comes from the training transcriptions (`vocab.json`). Train and
validation are split by form (a form's lines never straddle the split), a seeded shuffle of the
sorted form ids. Bad files in the real corpus (malformed XML, a missing transcription line, an
empty stroke set) raise a DataError naming the file and element, or with `skip_bad_files`
are left out, logged and listed in `skipped.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lnorm.data.common import DataError, manual_root, where
from lnorm.data.pipeline import Pad, Pipeline, Source, sequence_lengths
from lnorm.data.vocab import VOCAB_FILE, Vocab

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
IAM-OnDB: register at https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database,
download `lineStrokes-all.tar.gz` and `ascii-all.tar.gz`, and extract both into the manual
directory so that it holds `lineStrokes/a01/a01-000/a01-000u-01.xml, ...` and
`ascii/a01/a01-000/a01-000u.txt, ...`.
"""

_LINE_FILE = re.compile(r"^(?P<form>.+)-(?P<line>\d+)$")
_LISTED = 5  # skipped files named in the error when all are skipped


@dataclasses.dataclass(eq=False)
class IamOnDBConfig(tfds.core.BuilderConfig):
    """Preprocessing and split. The config name identifies a prepared dataset: `prepare`
    gives a config named `default` with other options a name of its own (`own_config`)."""

    flip_y: bool = True
    scale: float | None = None  # None: per-axis std of the training offsets
    max_length: int | None = None  # points; longer lines are dropped
    validation_fraction: float = 0.05  # of the forms
    split_seed: int = 0
    min_char_count: int = 1
    skip_bad_files: bool = False


@dataclasses.dataclass(frozen=True)
class _Line:
    id: str
    form: str
    points: np.ndarray  # [N, 3]: x, y, end of stroke
    text: str


class IamOnDB(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """`strokes [T, 3]` float32 `(dx, dy, pen_up)`, `chars [U]` int32 (character ids),
    `text` and `id`; splits train/validation."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [IamOnDBConfig(name="default")]  # noqa: RUF012 (TFDS API)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "strokes": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
                    "chars": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "text": tfds.features.Text(),
                    "id": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        root = manual_root(dl_manager, ["lineStrokes", "ascii"], MANUAL_DOWNLOAD_INSTRUCTIONS)
        lines, skipped = _read_corpus(root, skip_bad_files=cfg.skip_bad_files)
        if skipped:
            logging.warning("IAM-OnDB: skipped %d bad files (see skipped.json)", len(skipped))
        splits = _split_by_form(lines, cfg.validation_fraction, cfg.split_seed)
        too_long = 0
        if cfg.max_length is not None:
            for name, split in splits.items():
                kept = [x for x in split if len(x.points) <= cfg.max_length]
                too_long += len(split) - len(kept)
                splits[name] = kept
        if not all(splits.values()):
            raise DataError(f"{root}: a split is empty after dropping lines over max_length")
        offsets = {k: [_offsets(x.points, cfg.flip_y) for x in v] for k, v in splits.items()}
        scale = _scale(offsets["train"], cfg.scale)
        vocab = Vocab.build((list(x.text) for x in splits["train"]), min_count=cfg.min_char_count)
        out = Path(self.data_dir)  # TFDS's incomplete dir: renamed with the dataset when done
        vocab.save(out / VOCAB_FILE)
        (out / "skipped.json").write_text(json.dumps(skipped, indent=1))
        stats = {
            "scale": scale.tolist(),
            "flip_y": cfg.flip_y,
            "num_lines": {k: len(v) for k, v in splits.items()},
            "num_skipped": len(skipped),
            "num_too_long": too_long,
        }
        (out / "stats.json").write_text(json.dumps(stats, indent=1))
        return {
            name: self._generate_examples(splits[name], offsets[name], scale, vocab)
            for name in splits
        }

    def _generate_examples(
        self, lines: list[_Line], offsets: list[np.ndarray], scale: np.ndarray, vocab: Vocab
    ):
        for line, strokes in zip(lines, offsets, strict=True):
            yield (
                line.id,
                {
                    "strokes": (strokes / [*scale, 1.0]).astype(np.float32),
                    "chars": np.asarray(vocab.encode(line.text), np.int32),
                    "text": line.text,
                    "id": line.id,
                },
            )


def parse_strokes(path: Path) -> np.ndarray:
    """Points `[N, 3]` (x, y, 1 at each stroke's last point) of a lineStrokes XML file, in
    file order."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{where(path, e.position[0])}: malformed XML: {e}") from None
    stroke_set = next(root.iter("StrokeSet"), None)
    if stroke_set is None:
        raise DataError(f"{path}: expected a StrokeSet element; found none")
    rows = []
    for s, stroke in enumerate(stroke_set.iter("Stroke")):
        points = stroke.findall("Point")
        for p, point in enumerate(points):
            try:
                x, y = float(point.attrib["x"]), float(point.attrib["y"])
            except (KeyError, ValueError):
                raise DataError(
                    f"{path}: StrokeSet/Stroke[{s}]/Point[{p}]: expected numeric attributes x "
                    f"and y; got {point.attrib}"
                ) from None
            rows.append((x, y, float(p == len(points) - 1)))
    if not rows:
        raise DataError(f"{path}: StrokeSet: expected Stroke/Point elements; found no points")
    return np.asarray(rows, dtype=np.float64)


def parse_transcription(path: Path) -> list[str]:
    """The non-blank lines after `CSR:` of an ascii file, stripped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: expected a readable UTF-8 transcription file: {e}") from None
    lines = text.splitlines()
    try:
        start = [s.strip() for s in lines].index("CSR:")
    except ValueError:
        raise DataError(f"{path}: expected a line 'CSR:' before the transcription") from None
    return [s.strip() for s in lines[start + 1 :] if s.strip()]


def _read_corpus(root: Path, *, skip_bad_files: bool) -> tuple[list[_Line], list[dict]]:
    """Every line of the corpus, and the bad files left out (`skip_bad_files`) with reasons."""
    lines, skipped = [], []
    for path in sorted((root / "lineStrokes").glob("*/*/*.xml")):
        try:
            lines.append(_read_line(root, path))
        except DataError as e:
            if not skip_bad_files:
                raise
            skipped.append({"file": str(path.relative_to(root)), "reason": str(e)})
    if not lines and skipped:
        first = "".join(f"\n  {s['file']}: {s['reason']}" for s in skipped[:_LISTED])
        more = f"\n  ... and {len(skipped) - _LISTED} more" if len(skipped) > _LISTED else ""
        raise DataError(f"{root / 'lineStrokes'}: every stroke file was skipped as bad "
                        f"({len(skipped)} files; skip_bad_files=True):{first}{more}")
    if not lines:
        raise DataError(f"{root / 'lineStrokes'}: expected */*/*.xml stroke files; found none")
    return lines, skipped


def _read_line(root: Path, path: Path) -> _Line:
    """One stroke file and its line of the form's transcription."""
    m = _LINE_FILE.match(path.stem)
    if m is None:
        raise DataError(f"{path}: expected a file name FORM-NN.xml (e.g. a01-000u-01.xml)")
    folder = path.parent.relative_to(root / "lineStrokes")
    ascii_path = root / "ascii" / folder / f"{m['form']}.txt"
    text = parse_transcription(ascii_path)
    index = int(m["line"])
    if not 1 <= index <= len(text):
        raise DataError(
            f"{ascii_path}: expected a transcription line {index} after CSR: for {path.name}; "
            f"found {len(text)} lines"
        )
    return _Line(path.stem, m["form"], parse_strokes(path), text[index - 1])


def _split_by_form(lines: list[_Line], fraction: float, seed: int) -> dict[str, list[_Line]]:
    forms = sorted({x.form for x in lines})
    num_val = round(fraction * len(forms))
    if not 1 <= num_val < len(forms):
        raise DataError(
            f"validation_fraction={fraction} gives {num_val} of {len(forms)} forms; expected a "
            "fraction leaving both splits at least one form"
        )
    perm = np.random.default_rng(seed).permutation(len(forms))
    val = {forms[i] for i in perm[:num_val]}
    return {
        "train": [x for x in lines if x.form not in val],
        "validation": [x for x in lines if x.form in val],
    }


def _offsets(points: np.ndarray, flip_y: bool) -> np.ndarray:
    """`(dx, dy, pen_up)` per point; the first point's offset is zero."""
    out = np.zeros_like(points)
    out[1:, :2] = np.diff(points[:, :2], axis=0)
    out[:, 2] = points[:, 2]
    if flip_y:
        out[:, 1] *= -1
    return out


def _scale(train_offsets: list[np.ndarray], scale: float | None) -> np.ndarray:
    """The per-axis divisors: `scale` for both axes, or the std of the training offsets."""
    if scale is not None:
        return np.array([scale, scale], dtype=np.float64)
    std = np.concatenate(train_offsets)[:, :2].std(axis=0)
    if not np.all(std > 0):
        raise DataError(f"training offsets have zero spread {std.tolist()}: cannot normalise")
    return std


def load_stats(builder: tfds.core.DatasetBuilder) -> dict:
    """`stats.json` of a prepared IAM-OnDB: the `scale` divisors (multiply sampled offsets by
    them to get pen units), `flip_y`, and line counts."""
    return json.loads((Path(builder.data_dir) / "stats.json").read_text())


def make_pipeline(
    source: Source,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
    max_points: int | None = None,
    buckets: tuple[int, ...] | None = (100, 200, 300, 400, 500, 600, 800, 1000),
    bucket_by_length: bool = False,
) -> Pipeline:
    """Batches of `strokes [B, T, 3]` and `chars [B, U]`, each with `_mask` and `_length`.
    `max_points` crops each line to its first points (e.g. the paper's sequence length 500;
    the whole transcription stays visible to the attention window). With `bucket_by_length`,
    batches group lines of similar length (one pass over `source` to measure them)."""

    def transform(e):
        return {"strokes": e["strokes"][:max_points], "chars": e["chars"]}

    return Pipeline(
        source,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        transform=transform,
        pad={"strokes": Pad(buckets=buckets), "chars": Pad(buckets=(16, 32, 48, 64, 96))},
        lengths=sequence_lengths(source, "strokes") if bucket_by_length else None,
    )


def _glyphs(alphabet: str) -> dict[str, np.ndarray]:
    """A fixed little stroke (4 points within a unit box) per character, the same for every
    corpus, so that a model can learn which strokes each character makes."""
    rng = np.random.default_rng(1234)
    return {c: rng.uniform(0, 1, size=(4, 2)) * [0.8, 1.0] for c in alphabet}


_WORDS = ("the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "red", "hat")


def write_synthetic(out_dir: str | os.PathLike, *, num_examples: int, seed: int) -> Path:
    """Writes an IAM-OnDB-shaped corpus of about `num_examples` text lines (three per form,
    forms in writer folders): each character is drawn as its fixed glyph (one stroke, scaled to
    about 40 pen units, y growing downwards as on the tablet) plus noise; spaces move the pen."""
    rng = np.random.default_rng(seed)
    glyphs = _glyphs("".join(sorted(set("".join(_WORDS)))))
    out = Path(out_dir)
    for f in range(max(1, -(-num_examples // 3))):
        writer, form = f"s{f // 4:02d}", f"s{f // 4:02d}-{f % 4:03d}"
        texts = [" ".join(rng.choice(_WORDS, size=int(rng.integers(2, 5)))) for _ in range(3)]
        ascii_dir, stroke_dir = out / "ascii" / writer / form, out / "lineStrokes" / writer / form
        ascii_dir.mkdir(parents=True, exist_ok=True)
        stroke_dir.mkdir(parents=True, exist_ok=True)
        ocr = "\n".join(t.upper() for t in texts)  # a different text, to be ignored
        header = f"Data: synthetic\nOCR:\n\n{ocr}\n\nCSR:\n\n"
        (ascii_dir / f"{form}u.txt").write_text(header + "\n".join(texts) + "\n")
        for i, text in enumerate(texts, 1):
            strokes, x0 = [], 100.0
            for c in text:
                if c != " ":
                    pts = glyphs[c] * 40 + [x0, 500] + rng.normal(0, 1.0, size=(4, 2))
                    strokes.append(pts.round().astype(int))
                x0 += 40
            (stroke_dir / f"{form}u-{i:02d}.xml").write_text(_stroke_xml(strokes))
    return out


def _stroke_xml(strokes: list[np.ndarray]) -> str:
    body = "".join(
        "<Stroke>"
        + "".join(f'<Point x="{x}" y="{y}" time="{t}"/>' for t, (x, y) in enumerate(s))
        + "</Stroke>"
        for s in strokes
    )
    session = f"<WhiteboardCaptureSession><StrokeSet>{body}</StrokeSet></WhiteboardCaptureSession>"
    return f'<?xml version="1.0"?>\n{session}\n'
