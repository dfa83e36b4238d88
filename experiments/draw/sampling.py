"""DRAW's pictures: samples from the prior, the canvas sequence of reconstructions, image grids,
canvas strips and animation frames, all as numpy arrays (uint8 images), which the evaluators
turn into `lnorm.artifacts.Artifact`s (PNG, GIF) for W&B and the run dir.

Canvases are probabilities `sigmoid(c_t)` `[T, n, H, W]`, one per glimpse. Call these on a
model in evaluation mode (`model.eval()`), which matters for batch norm only.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx

from experiments.draw.model import DRAW
from experiments.draw.objective import example_noise

BORDER = 128  # grey lines between the tiles: neither ink (255) nor background (0)


@nnx.jit
def _generate(model: DRAW, eps: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(model.generate(eps))


@nnx.jit
def _reconstruct(model: DRAW, x: jax.Array, eps: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(model(x, eps, keep_canvases=True).canvases)


def sample(model: DRAW, rng: jax.Array, n: int) -> np.ndarray:
    """`n` samples from the prior: canvases `[T, n, H, W]`; the last glimpse is the sample."""
    return np.asarray(_generate(model, model.noise(rng, n)))


def reconstruction_canvases(
    model: DRAW, images: np.ndarray, rng: jax.Array | None = None
) -> np.ndarray:
    """Canvases `[T, n, H, W]` of the model reconstructing `images[n, H, W]`; the noise comes
    from `rng`, or (None) from each image's own key as in evaluation, so the pictures of one
    checkpoint are reproducible."""
    x = np.asarray(images, np.float32).reshape(-1, *model.image_shape)
    eps = example_noise(model, x, 1)[0] if rng is None else model.noise(rng, len(x))
    return np.asarray(_reconstruct(model, x, eps))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to uint8 0..255 (clipped)."""
    return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def grid(images: np.ndarray, rows: int, cols: int, *, pad: int = 1) -> np.ndarray:
    """`images[N, H, W]` in [0, 1] tiled row by row into one uint8 image with `pad`-pixel grey
    lines between and around the tiles; tiles beyond N stay black."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"grid: expected images [N, H, W], got shape {images.shape}")
    n, height, width = images.shape
    if n > rows * cols:
        raise ValueError(f"grid: {n} images do not fit {rows} x {cols} tiles")
    tiles = np.zeros((rows * cols, height, width), np.uint8)
    tiles[:n] = to_uint8(images)
    out = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad), BORDER, np.uint8)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, cols)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        out[top : top + height, left : left + width] = tile
    return out


def glimpse_steps(num_glimpses: int, every: int) -> list[int]:
    """The glimpses a strip shows: every `every`-th (1-indexed: every, 2 every, ...) and the
    last, as 0-indexed positions."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    steps = list(range(every - 1, num_glimpses, every))
    return steps if steps and steps[-1] == num_glimpses - 1 else [*steps, num_glimpses - 1]


def canvas_strip(
    canvases: np.ndarray, *, every: int = 8, targets: np.ndarray | None = None
) -> np.ndarray:
    """One row per example: its canvas at every `every`-th glimpse and the last (left to
    right), then its target image when given. uint8."""
    canvases = np.asarray(canvases)
    if canvases.ndim != 4:
        raise ValueError(f"canvas_strip: expected canvases [T, n, H, W], got {canvases.shape}")
    columns = [canvases[t] for t in glimpse_steps(canvases.shape[0], every)]
    if targets is not None:
        columns.append(np.asarray(targets, np.float32).reshape(canvases.shape[1:]))
    tiles = np.stack(columns, axis=1)  # [n, columns, H, W]
    n, cols = tiles.shape[:2]
    return grid(tiles.reshape(n * cols, *tiles.shape[2:]), n, cols)


def canvas_frames(canvases: np.ndarray, *, cols: int | None = None, scale: int = 2) -> np.ndarray:
    """The frames of an animation of canvases `[T, n, H, W]`: frame t is the grid of all n
    canvases at glimpse t, enlarged `scale` times; uint8 `[T, H', W']` (for `Artifact.gif`)."""
    canvases = np.asarray(canvases)
    if canvases.ndim != 4:
        raise ValueError(f"canvas_frames: expected canvases [T, n, H, W], got {canvases.shape}")
    n = canvases.shape[1]
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    frames = np.stack([grid(frame, rows, cols) for frame in canvases])
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)
