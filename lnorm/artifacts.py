"""Evaluation outputs that are not scalars: images, text, HTML, figures, arrays, animations.

An evaluator returns them beside its scalars (`{"error": 0.1, "samples": Artifact.image(grid)}`);
the trainer writes each under `<run_dir>/artifacts/<evaluator>/<name>/step_<step>.<ext>` (temp
file, then rename) and logs the file to W&B as media, so a sample is always on disk with the
step it belongs to, whatever happens to W&B.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ARTIFACT_DIR = "artifacts"
KINDS = {"image": "png", "gif": "gif", "svg": "svg", "text": "txt", "html": "html",
         "array": "npy"}


@dataclass(frozen=True)
class Artifact:
    """One output: `kind` (a key of `KINDS`) and its content as bytes, ready to be written."""

    kind: str
    content: bytes

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Artifact kind {self.kind!r}: expected one of {sorted(KINDS)}")

    @property
    def suffix(self) -> str:
        return KINDS[self.kind]

    @classmethod
    def image(cls, pixels: np.ndarray) -> Artifact:
        """A PNG from `[H, W]` or `[H, W, 3|4]` pixels: uint8, or floats in [0, 1]."""
        from PIL import Image

        return cls("image", _encode(Image.fromarray(_to_uint8(pixels)), "PNG"))

    @classmethod
    def gif(cls, frames: np.ndarray, *, duration_ms: int = 100) -> Artifact:
        """An animated GIF from `[N, H, W]` frames (uint8, or floats in [0, 1])."""
        from PIL import Image

        images = [Image.fromarray(_to_uint8(f)) for f in frames]
        buf = io.BytesIO()
        images[0].save(buf, "GIF", save_all=True, append_images=images[1:],
                       duration=duration_ms, loop=0)
        return cls("gif", buf.getvalue())

    @classmethod
    def figure(cls, fig: Any, *, dpi: int = 100) -> Artifact:
        """A matplotlib figure as PNG (the figure is closed)."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return cls("image", buf.getvalue())

    @classmethod
    def text(cls, text: str) -> Artifact:
        return cls("text", text.encode())

    @classmethod
    def html(cls, html: str) -> Artifact:
        return cls("html", html.encode())

    @classmethod
    def svg(cls, svg: str) -> Artifact:
        return cls("svg", svg.encode())

    @classmethod
    def array(cls, array: np.ndarray) -> Artifact:
        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        return cls("array", buf.getvalue())

    def write(self, directory: str | os.PathLike, step: int) -> Path:
        """Writes `directory/step_<step>.<suffix>` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"step_{step}.{self.suffix}"
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(self.content)
        os.replace(tmp, path)
        return path


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    return (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)


def _encode(image: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def split_results(results: dict[str, Any]) -> tuple[dict[str, float], dict[str, Artifact]]:
    """An evaluator's results as (scalars as floats, artifacts)."""
    scalars, artifacts = {}, {}
    for key, value in results.items():
        if isinstance(value, Artifact):
            artifacts[key] = value
        else:
            scalars[key] = float(value)
    return scalars, artifacts
