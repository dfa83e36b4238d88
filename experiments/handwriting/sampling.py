"""Writing a given text with a trained network (Graves 2013, §5.4-5.5), and pictures of it.

`sample` feeds each drawn point back as the next input, inside one `jax.lax.while_loop`, and
stops when the window has moved past the text: at the first step where phi at position U+1
(just past the last character) exceeds phi at every character u = 1..U (Graves §5.4). That
step's output would already describe pen movement past the text, so it is not kept. `bias`
sharpens the distribution as in §5.4; `prime` (strokes and their text) conditions on a real
line first (§5.5): the network reads the priming strokes with the priming text followed by the
text to write, then continues. Sampling never changes the model.

Points are `(dx, dy, pen_up)` in the data's normalised units with y up; multiply the offsets
by the dataset's `scale` (`lnorm.data.iam_ondb.load_stats`) for pen units.
"""

from __future__ import annotations

import os
from functools import partial
from typing import IO, NamedTuple
from xml.sax.saxutils import escape

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

from experiments.handwriting.model import POINT_FEATURES, HandwritingSynthesis
from experiments.handwriting.objective import mixture

Array = jax.Array


class Sample(NamedTuple):
    points: np.ndarray  # [N, 3] (dx, dy, pen_up)
    phi: np.ndarray  # [N, U]: the window over the (priming + given) text at each drawn point
    finished: bool  # the window passed the end of the text before max_steps


def draw_point(y: Array, key: Array, *, bias: float = 0.0) -> Array:
    """One point `[B, 3]` from the mixture that `y[B, 1 + 6M]` parametrises."""
    d = mixture(y, bias=bias)
    k_pi, k_z, k_eos = jax.random.split(key, 3)
    j = jax.random.categorical(k_pi, d.log_pi, axis=-1)[:, None]
    pick = lambda a: jnp.take_along_axis(a, j, axis=-1)[:, 0]
    mu1, mu2, rho = pick(d.mu1), pick(d.mu2), pick(d.rho)
    s1, s2 = jnp.exp(pick(d.log_sigma1)), jnp.exp(pick(d.log_sigma2))
    z1, z2 = jax.random.normal(k_z, (2, *mu1.shape))
    x1 = mu1 + s1 * z1
    x2 = mu2 + s2 * (rho * z1 + jnp.sqrt(1.0 - rho * rho) * z2)
    eos = jax.random.bernoulli(k_eos, jax.nn.sigmoid(d.eos_logit)).astype(x1.dtype)
    return jnp.stack([x1, x2, eos], axis=-1)


@partial(jax.jit, static_argnums=(0, 5))
def _sample(graphdef, state, chars, prime_points, key, max_steps: int, bias):
    model: HandwritingSynthesis = nnx.merge(graphdef, state)
    text = model.encode_text(chars)
    num_chars = chars.shape[1]
    carry = model.initial_carry(1)
    if prime_points.shape[1] > 1:  # all but the last priming point; the loop reads that one
        carry, _, _ = model.scan(carry, prime_points[:, :-1], text)
    t0 = prime_points.shape[1] - 1

    def cond(s):
        i, _, _, done, _, _ = s
        return (i < max_steps) & ~done

    def body(s):
        i, carry, x, _, points, phis = s
        m = nnx.merge(graphdef, state)  # a fresh copy per step: nothing leaks out of the loop
        carry, h, phi = m.step(carry, x, text, t=t0 + i)
        done = phi[0, num_chars] > jnp.max(phi[0, :num_chars])
        x = draw_point(m.output(h), jax.random.fold_in(key, i), bias=bias)
        points = points.at[i].set(x[0])
        phis = phis.at[i].set(phi[0, :num_chars])
        return i + (~done).astype(i.dtype), carry, x, done, points, phis

    init = (
        jnp.zeros((), jnp.int32),
        carry,
        prime_points[:, -1],
        jnp.zeros((), bool),
        jnp.zeros((max_steps, POINT_FEATURES), jnp.float32),
        jnp.zeros((max_steps, num_chars), jnp.float32),
    )
    n, _, _, done, points, phis = jax.lax.while_loop(cond, body, init)
    return n, done, points, phis


def sample(
    model: HandwritingSynthesis,
    text_ids: np.ndarray,
    rng: Array,
    *,
    bias: float = 0.0,
    prime: tuple[np.ndarray, np.ndarray] | None = None,
    max_steps: int = 1000,
) -> Sample:
    """Handwriting for the character ids `text_ids[U]`; `prime = (strokes[P, 3], ids)`.

    Without priming the first input is a zero offset with the pen down. Put the model in eval
    mode first (batch norm's running statistics). Compiles once per text length, priming
    length and `max_steps`.
    """
    ids = np.asarray(text_ids, np.int32).reshape(-1)
    start = np.zeros((1, POINT_FEATURES), np.float32)
    if prime is not None:
        start = np.asarray(prime[0], np.float32)
        if start.ndim != 2 or start.shape[1] != POINT_FEATURES or len(start) < 1:
            raise ValueError(f"sample: prime strokes must be [P >= 1, 3]; got {start.shape}")
        ids = np.concatenate([np.asarray(prime[1], np.int32).reshape(-1), ids])
    if not len(ids):
        raise ValueError("sample: the text is empty")
    if ids.min() < 0 or ids.max() >= model.vocab_size:
        raise ValueError(f"sample: character ids must lie in [0, {model.vocab_size}); got {ids}")
    if max_steps < 1:
        raise ValueError(f"sample: max_steps={max_steps}; expected >= 1")
    graphdef, state = nnx.split(model)
    chars, start = jnp.asarray(ids)[None], jnp.asarray(start)[None]
    n, done, points, phis = _sample(graphdef, state, chars, start, rng, max_steps, bias)
    n = int(n)
    return Sample(np.asarray(points[:n]), np.asarray(phis[:n]), bool(done))


def _strokes(points: np.ndarray, scale: tuple[float, float]) -> list[np.ndarray]:
    """Absolute pen positions `[n, 2]` (y up) per stroke; a stroke ends at a pen-up point."""
    points = np.asarray(points, np.float64).reshape(-1, POINT_FEATURES)
    xy = np.cumsum(points[:, :2] * np.asarray(scale), axis=0)
    ends = np.flatnonzero(points[:, 2] > 0.5) + 1
    return [s for s in np.split(xy, ends) if len(s)]


def strokes_to_svg(
    points: np.ndarray, *, scale: tuple[float, float] = (1.0, 1.0),
    stroke_width: float | None = None, title: str | None = None,
) -> str:
    """An SVG document drawing the offsets `points[N, 3]` (one path per stroke); the pen's
    width defaults to 2% of the drawing's smaller extent."""
    strokes = _strokes(points, scale)
    xy = np.concatenate(strokes) if strokes else np.zeros((1, 2))
    xy = xy * [1, -1]  # SVG's y grows downwards
    if stroke_width is None:
        stroke_width = max(0.02 * float(np.ptp(xy, axis=0).min()), 1e-3)
    margin = 2 * stroke_width + 1e-3
    lo = xy.min(0) - margin
    size = xy.max(0) + margin - lo
    paths = []
    for s in strokes:
        s = s * [1, -1]
        pts = " L ".join(f"{x:.4g} {y:.4g}" for x, y in s)
        paths.append(f'<path d="M {pts}"/>' if len(s) > 1 else
                     f'<circle cx="{s[0, 0]:.4g}" cy="{s[0, 1]:.4g}" r="{stroke_width:.4g}"/>')
    head = f"<title>{escape(title)}</title>" if title else ""
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="{lo[0]:.4g} {lo[1]:.4g} {size[0]:.4g} {size[1]:.4g}">{head}'
        f'<g fill="none" stroke="black" stroke-width="{stroke_width:.4g}" '
        f'stroke-linecap="round" stroke-linejoin="round">{"".join(paths)}</g></svg>\n'
    )


def strokes_to_png(
    points: np.ndarray, path: str | os.PathLike | IO[bytes], *,
    scale: tuple[float, float] = (1.0, 1.0), title: str | None = None,
) -> None:
    """A PNG of the offsets `points[N, 3]` (matplotlib, Agg: no display needed)."""
    strokes = _strokes(points, scale)
    extent = np.ptp(np.concatenate(strokes), axis=0) if strokes else np.ones(2)
    width = float(np.clip(extent[0] / max(extent[1], 1e-6), 2.0, 12.0)) * 1.5
    fig = Figure(figsize=(width, 2.0))
    ax = fig.subplots()
    for s in strokes:
        marker = "." if len(s) == 1 else None  # a lone point (a dot) is no line
        ax.plot(s[:, 0], s[:, 1], color="black", linewidth=1.5, marker=marker)
    ax.set_aspect("equal", adjustable="datalim")
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")


def phi_heatmap_png(phi: np.ndarray, text: str, path: str | os.PathLike | IO[bytes]) -> None:
    """The window `phi[N, U]` as a heat map: characters (rows) against drawn points."""
    phi = np.asarray(phi, np.float64).reshape(-1, len(text))
    fig = Figure(figsize=(max(4.0, min(16.0, len(phi) / 40)), max(2.0, len(text) * 0.2)))
    ax = fig.subplots()
    ax.imshow(phi.T, aspect="auto", origin="upper", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(text)), [repr(c)[1:-1] for c in text], fontsize=7)
    ax.set_xlabel("point")
    ax.set_ylabel("character")
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
