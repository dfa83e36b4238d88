"""IAM-OnDB builder: strokes to offsets, transcriptions after CSR:, scale statistics, split by
form, bad files (error or skip, all skipped), the README's config, pipeline; a missing or empty
`manual_dir` (here and for a builder with download sources) is an error naming it."""

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from lnorm.data import iam_ondb as iam
from lnorm.data import mnist
from lnorm.data.common import DataError, own_config, prepare
from lnorm.data.vocab import load_vocab

ASCII = "Data: form\nOCR:\n\nAb cd WRONG\nef\n\nCSR:\n\nAb cd\nef\n"
# three strokes, the second a single dot; the times are not used
LINE_01 = """<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession>
  <WhiteboardDescription><SensorLocation corner="top_left"/></WhiteboardDescription>
  <StrokeSet>
    <Stroke colour="black" start_time="1.0" end_time="1.2">
      <Point x="10" y="20" time="1.00"/><Point x="13" y="24" time="1.01"/>
      <Point x="13" y="30" time="1.02"/>
    </Stroke>
    <Stroke colour="black" start_time="1.3" end_time="1.3">
      <Point x="20" y="20" time="1.3"/>
    </Stroke>
    <Stroke colour="black" start_time="1.4" end_time="1.5">
      <Point x="25" y="18" time="1.4"/><Point x="27" y="18" time="1.5"/>
    </Stroke>
  </StrokeSet>
</WhiteboardCaptureSession>
"""
# (dx, -dy, pen_up) per point, by hand
OFFSETS_01 = [[0, 0, 0], [3, -4, 0], [0, -6, 1], [7, 10, 1], [5, 2, 0], [2, 0, 1]]


def _xml(points):
    pts = "".join(f'<Point x="{x}" y="{y}" time="0"/>' for x, y in points)
    strokes = f"<StrokeSet><Stroke>{pts}</Stroke></StrokeSet>"
    return f"<WhiteboardCaptureSession>{strokes}</WhiteboardCaptureSession>"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def fixture_builder(tmp_path_factory):
    root = tmp_path_factory.mktemp("iam")
    _write(root, "ascii/a01/a01-000/a01-000u.txt", ASCII)
    _write(root, "lineStrokes/a01/a01-000/a01-000u-01.xml", LINE_01)
    _write(root, "lineStrokes/a01/a01-000/a01-000u-02.xml", _xml([(0, 0), (4, 4)]))
    _write(root, "ascii/a01/a01-001/a01-001u.txt", "CSR:\n\nxyz\n")
    _write(root, "lineStrokes/a01/a01-001/a01-001u-01.xml", _xml([(5, 5), (6, 8), (9, 9)]))
    cfg = iam.IamOnDBConfig(name="fixture", scale=10.0, validation_fraction=0.5)
    return prepare(iam.IamOnDB, tmp_path_factory.mktemp("data"), manual_dir=root, config=cfg)


def _examples(builder):
    src = builder.as_data_source()
    return {
        split: {(e := src[split][i])["id"].decode(): e for i in range(len(src[split]))}
        for split in src
    }


def test_fixture_parsed_exactly(fixture_builder):
    splits = _examples(fixture_builder)
    lines = {**splits["train"], **splits["validation"]}
    np.testing.assert_allclose(lines["a01-000u-01"]["strokes"], np.array(OFFSETS_01) / [10, 10, 1])
    np.testing.assert_allclose(lines["a01-000u-02"]["strokes"], [[0, 0, 0], [0.4, -0.4, 1]])
    texts = {k: e["text"].decode() for k, e in lines.items()}
    assert texts == {"a01-000u-01": "Ab cd", "a01-000u-02": "ef", "a01-001u-01": "xyz"}
    # one form per split; a form's lines stay together
    forms = {s: {k[:8] for k in v} for s, v in splits.items()}
    assert sorted(map(len, forms.values())) == [1, 1] and not forms["train"] & forms["validation"]
    vocab = load_vocab(fixture_builder)
    train_chars = {c for k in splits["train"] for c in texts[k]}
    assert set(vocab.tokens[2:]) == train_chars  # training transcriptions only
    for e in lines.values():
        expected = [c if c in train_chars else "<unk>" for c in e["text"].decode()]
        assert vocab.decode(e["chars"]) == expected
    stats = iam.load_stats(fixture_builder)
    assert stats["scale"] == [10.0, 10.0] and stats["flip_y"] is True
    assert sum(stats["num_lines"].values()) == 3 and stats["num_skipped"] == 0


def _independent_offsets(path: Path) -> np.ndarray:
    rows = []
    for stroke in ET.parse(path).getroot().iter("Stroke"):
        pts = [(float(p.get("x")), float(p.get("y"))) for p in stroke.iter("Point")]
        rows += [(x, y, i == len(pts) - 1) for i, (x, y) in enumerate(pts)]
    a = np.array(rows, dtype=float)
    d = np.vstack([[0, 0], np.diff(a[:, :2], axis=0)]) * [1, -1]
    return np.column_stack([d, a[:, 2]])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    raw = iam.write_synthetic(tmp_path_factory.mktemp("syn"), num_examples=24, seed=2)
    cfg = iam.IamOnDBConfig(name="synthetic", validation_fraction=0.25)
    return raw, prepare(iam.IamOnDB, tmp_path_factory.mktemp("data"), manual_dir=raw, config=cfg)


def test_synthetic_scale_is_training_std(synthetic):
    raw, builder = synthetic
    train = _examples(builder)["train"]
    offsets = {k: _independent_offsets(next(raw.glob(f"lineStrokes/*/*/{k}.xml"))) for k in train}
    std = np.concatenate(list(offsets.values()))[:, :2].std(axis=0)
    scale = iam.load_stats(builder)["scale"]
    np.testing.assert_allclose(scale, std, rtol=1e-6)
    for k, e in train.items():
        np.testing.assert_allclose(e["strokes"], offsets[k] / [*std, 1], rtol=1e-5, atol=1e-6)
        # the strokes depend on the text: one pen-up per drawn character (spaces only move)
        text = e["text"].decode()
        assert e["strokes"][:, 2].sum() == len(text.replace(" ", ""))
        assert text == text.lower()  # the OCR section (upper case) is not the transcription


def test_pipeline_pads_and_crops(synthetic):
    _, builder = synthetic
    src = builder.as_data_source()["train"]
    pipe = iam.make_pipeline(src, batch_size=5, seed=1, max_points=60, bucket_by_length=True)
    seen = 0
    for batch in pipe.batches(epoch=0):
        for key in ("strokes", "chars"):
            value, mask, length = batch[key], batch[f"{key}_mask"], batch[f"{key}_length"]
            np.testing.assert_array_equal(mask, np.arange(value.shape[1]) < length[:, None])
            assert np.all(value[~mask] == 0)
        assert batch["strokes"].shape[1:] == (100, 3) and batch["strokes_length"].max() <= 60
        seen += len(batch["chars"])
    assert seen == len(src)


def test_bad_files_raise_or_are_skipped(tmp_path):
    raw = iam.write_synthetic(tmp_path / "raw", num_examples=12, seed=0)
    _write(raw, "ascii/b01/b01-000/b01-000u.txt", "CSR:\n\nonly one line\n")
    _write(raw, "lineStrokes/b01/b01-000/b01-000u-01.xml", "<StrokeSet><Stroke>")
    _write(raw, "lineStrokes/b01/b01-000/b01-000u-02.xml", _xml([(0, 0), (1, 1)]))
    _write(raw, "ascii/b01/b01-001/b01-001u.txt", "CSR:\n\nempty\n")
    _write(raw, "lineStrokes/b01/b01-001/b01-001u-01.xml", "<StrokeSet></StrokeSet>")

    with pytest.raises(DataError, match=r"b01-000u-01\.xml:\d+: malformed XML"):
        prepare(iam.IamOnDB, tmp_path / "data", manual_dir=raw)

    lengths = [len(re.findall("<Point", p.read_text())) for p in raw.glob("lineStrokes/s*/*/*.xml")]
    cap = max(lengths) - 1  # drops the longest lines
    cfg = iam.IamOnDBConfig(
        name="skip", skip_bad_files=True, max_length=cap, validation_fraction=0.25
    )
    builder = prepare(iam.IamOnDB, tmp_path / "data", manual_dir=raw, config=cfg)
    skipped = json.loads((Path(builder.data_dir) / "skipped.json").read_text())
    assert [s["file"] for s in skipped] == [
        "lineStrokes/b01/b01-000/b01-000u-01.xml",
        "lineStrokes/b01/b01-000/b01-000u-02.xml",
        "lineStrokes/b01/b01-001/b01-001u-01.xml",
    ]
    assert "malformed XML" in skipped[0]["reason"]
    assert "expected a transcription line 2 after CSR:" in skipped[1]["reason"]
    assert "found no points" in skipped[2]["reason"]
    stats = iam.load_stats(builder)
    too_long = sum(n > cap for n in lengths)
    assert stats["num_skipped"] == 3 and stats["num_too_long"] == too_long >= 1
    assert sum(stats["num_lines"].values()) == len(lengths) - too_long
    src = builder.as_data_source()
    assert all(len(s[i]["strokes"]) <= cap for s in src.values() for i in range(len(s)))


def test_malformed_elements_are_named(tmp_path):
    path = tmp_path / "x-01.xml"
    path.write_text('<StrokeSet><Stroke><Point x="1" y="2"/><Point x="3"/></Stroke></StrokeSet>')
    with pytest.raises(DataError, match=r"Stroke\[0\]/Point\[1\]: expected numeric attributes"):
        iam.parse_strokes(path)
    path.write_text("<Session><Other/></Session>")
    with pytest.raises(DataError, match="expected a StrokeSet element"):
        iam.parse_strokes(path)
    text = tmp_path / "x.txt"
    text.write_text("OCR:\n\nsome text\n")
    with pytest.raises(DataError, match=r"x\.txt: expected a line 'CSR:'"):
        iam.parse_transcription(text)


def test_missing_files_give_instructions(tmp_path):
    (tmp_path / "manual" / "ascii").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing files.*lineStrokes") as e:
        prepare(iam.IamOnDB, tmp_path / "data", manual_dir=tmp_path / "manual")
    assert "lineStrokes-all.tar.gz" in str(e.value)


def test_readme_config_prepares_under_a_name_of_its_own(tmp_path):
    """`IamOnDBConfig(name="default", skip_bad_files=True)` (the README's) is named like the
    predefined config, which TFDS refuses; it prepares under a stable name of its own."""
    raw = iam.write_synthetic(tmp_path / "raw", num_examples=12, seed=0)
    _write(raw, "lineStrokes/s00/s00-000/s00-000u-09.xml", "<StrokeSet><Stroke>")

    def readme_config():
        return iam.IamOnDBConfig(name="default", skip_bad_files=True, validation_fraction=0.25)

    builder = prepare(iam.IamOnDB, tmp_path / "data", manual_dir=raw, config=readme_config())
    name = builder.builder_config.name
    assert re.fullmatch(r"default-[0-9a-f]{8}", name)
    assert [s["file"] for s in json.loads((Path(builder.data_dir) / "skipped.json").read_text())
            ] == ["lineStrokes/s00/s00-000/s00-000u-09.xml"]
    again = prepare(iam.IamOnDB, tmp_path / "data", config=readme_config())  # prepared: found
    assert again.builder_config.name == name and again.data_dir == builder.data_dir
    other = iam.IamOnDBConfig(name="default", skip_bad_files=True, validation_fraction=0.5)
    assert prepare(iam.IamOnDB, tmp_path / "data", manual_dir=raw,
                   config=other).builder_config.name not in (name, "default")
    plain = iam.IamOnDBConfig(name="default", validation_fraction=0.05)  # the predefined options
    assert own_config(iam.IamOnDB, plain) is iam.IamOnDB.BUILDER_CONFIGS[0]


def test_every_file_skipped_lists_the_files_and_why(tmp_path):
    raw = tmp_path / "raw"
    _write(raw, "ascii/b01/b01-000/b01-000u.txt", "CSR:\n\nonly one line\n")
    _write(raw, "lineStrokes/b01/b01-000/b01-000u-01.xml", "<StrokeSet><Stroke>")
    _write(raw, "lineStrokes/b01/b01-000/b01-000u-02.xml", _xml([(0, 0), (1, 1)]))
    for i in range(3, 9):
        _write(raw, f"lineStrokes/b01/b01-000/b01-000u-{i:02d}.xml", "<StrokeSet/>")
    cfg = iam.IamOnDBConfig(name="skip-all", skip_bad_files=True)
    with pytest.raises(DataError) as e:
        prepare(iam.IamOnDB, tmp_path / "data", manual_dir=raw, config=cfg)
    msg = str(e.value)
    assert "every stroke file was skipped as bad (8 files" in msg
    assert re.search(r"b01-000u-01\.xml: .*malformed XML", msg)
    assert re.search(r"b01-000u-02\.xml: .*expected a transcription line 2", msg)
    assert "b01-000u-05.xml" in msg and "b01-000u-06.xml" not in msg and "... and 3 more" in msg


@pytest.mark.parametrize("builder", [iam.IamOnDB, mnist.Mnist], ids=lambda b: b.__name__)
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_manual_dir_is_an_error_naming_it(tmp_path, monkeypatch, builder, state):
    def no_download(*args, **kwargs):
        raise AssertionError("a named manual_dir must not fall back to downloading")

    monkeypatch.setattr(mnist, "download_with_timeout", no_download)
    folder = tmp_path / "manual"
    if state == "empty":
        folder.mkdir()
    what = "does not exist" if state == "missing" else "is empty"
    with pytest.raises(DataError, match=rf"{re.escape(str(folder))} ({what}|does not exist or "
                                        "is empty)") as e:
        prepare(builder, tmp_path / "data", manual_dir=folder)
    assert builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip() in str(e.value)
