"""The handwriting experiment's evaluations: the NLL of a split, and handwriting samples.

- `nll`: `nll` per sequence (Graves' unit), `nll_per_point` and `points` (mean points per
  sequence) of a split, from `objective.metric_sums` (padding-exact sums).
- `samples`: the network writing `model.sample_text` (None: the first validation line's text)
  at bias `model.sample_bias` (Graves §5.4), and with `model.sample_prime` once more primed by
  the first training line (§5.5: its strokes and text first, then the text). Each drawing comes
  as SVG and PNG, with the attention window (phi over the characters against the drawn points)
  as a PNG heat map; sampling stops when the window has passed the end of the text (or after
  `model.sample_max_steps` points: `finished` says which).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from experiments.handwriting import objective, sampling
from experiments.handwriting.data import Corpus
from experiments.handwriting.model import HandwritingSynthesis
from lnorm.artifacts import Artifact
from lnorm.metrics import evaluate


def nll(model: HandwritingSynthesis, batches: Iterable[dict]) -> dict[str, float]:
    """`{"nll", "nll_per_point", "points"}` over `batches`."""
    return objective.with_per_point(evaluate(model, objective.metric_sums, batches))


def encode(corpus: Corpus, text: str, what: str) -> np.ndarray:
    """The ids of `text`; a character the training vocabulary lacks is an error naming `what`."""
    missing = sorted({c for c in text if c not in corpus.vocab})
    if not text or missing:
        why = "it is empty" if not text else f"characters {missing} are not in it"
        raise ValueError(f"{what}={text!r}: cannot write it, {why} (the training vocabulary: "
                         f"{''.join(corpus.vocab.tokens[2:])!r})")
    return np.asarray(corpus.vocab.encode(list(text)), np.int32)


def _png(draw: Callable[[io.BytesIO], None]) -> Artifact:
    buf = io.BytesIO()
    draw(buf)
    return Artifact("image", buf.getvalue())


def _pictures(drawn: sampling.Sample, title: str, chars: str, scale: tuple[float, float],
              prefix: str) -> dict[str, Any]:
    """The drawing (SVG, PNG) titled `title`, the window over `chars` (PNG), its length and
    whether it finished."""
    return {
        prefix: Artifact.svg(sampling.strokes_to_svg(drawn.points, scale=scale, title=title)),
        f"{prefix}_png": _png(lambda f: sampling.strokes_to_png(drawn.points, f, scale=scale,
                                                                title=title)),
        f"{prefix}_phi": _png(lambda f: sampling.phi_heatmap_png(drawn.phi, chars, f)),
        f"{prefix}_points": float(len(drawn.points)),
        f"{prefix}_finished": float(drawn.finished),
    }


def samples(model: HandwritingSynthesis, rng: jax.Array, corpus: Corpus, model_conf: Any,
            max_points: int | None) -> dict[str, Any]:
    """`handwriting` (SVG), `handwriting_png`, `handwriting_phi`, `handwriting_points`,
    `handwriting_finished`, and the same as `primed_*` with `model_conf.sample_prime`."""
    text = model_conf.sample_text
    if text is None:
        text = bytes(corpus.validation[0]["text"]).decode()
    ids = encode(corpus, text, "model.sample_text")
    key_plain, key_primed = jax.random.split(rng)
    drawn = sampling.sample(model, ids, key_plain, bias=model_conf.sample_bias,
                            max_steps=model_conf.sample_max_steps)
    out = _pictures(drawn, text, text, corpus.scale, "handwriting")
    if model_conf.sample_prime:
        line = corpus.train[0]
        prime_text = bytes(line["text"]).decode()
        prime = (np.asarray(line["strokes"])[:max_points], np.asarray(line["chars"]))
        drawn = sampling.sample(model, ids, key_primed, bias=model_conf.sample_bias,
                                prime=prime, max_steps=model_conf.sample_max_steps)
        title = f"{text} (primed with {prime_text!r})"
        out.update(_pictures(drawn, title, prime_text + text, corpus.scale, "primed"))
    return out
