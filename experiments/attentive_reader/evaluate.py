"""The attentive reader's evaluations: error and NLL over a whole split, and the attention over
one document drawn as tokens coloured by their weight (HTML and PNG)."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.attentive_reader.data import ReaderData, example_batch, load_data
from experiments.attentive_reader.model import AttentiveReader
from experiments.attentive_reader.objective import metric_sums
from lnorm.artifacts import Artifact
from lnorm.data.pipeline import Pipeline
from lnorm.metrics import evaluate, gather
from lnorm.trainer import EvalContext


def split_evaluator(pipe: Pipeline) -> Callable[[AttentiveReader, EvalContext], dict]:
    """`nll` and `error` averaged over every question the pipeline yields."""

    def run(model: AttentiveReader, ctx: EvalContext) -> dict[str, float]:
        return evaluate(model, metric_sums, pipe.batches(0))

    return run


def _reading(model: AttentiveReader, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    out = model(batch)
    return {"attention": out.attention, "prediction": jnp.argmax(out.logits, axis=-1)}


def attention_html(tokens: Sequence[str], weights: np.ndarray, *, query: Sequence[str],
                   answer: str, prediction: str, title: str) -> str:
    """A page with the document's tokens on a white-to-red scale of their attention weight
    (the largest weight full red; each token's weight in its tooltip), the query, the answer
    and the model's prediction."""
    top = float(np.max(weights)) or 1.0
    spans = " ".join(
        f'<span title="{w:.4f}" style="background: rgba(220, 30, 30, {w / top:.3f})">'
        f"{html.escape(t)}</span>" for t, w in zip(tokens, weights, strict=True))
    verdict = "right" if prediction == answer else "wrong"
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n"
        "<body style='font-family: monospace; max-width: 60em; line-height: 1.9'>\n"
        f"<h3>{html.escape(title)}</h3>\n"
        f"<p><b>query</b>: {html.escape(' '.join(query))}<br>\n"
        f"<b>answer</b>: {html.escape(answer)} &nbsp; <b>prediction</b>: "
        f"{html.escape(prediction)} ({verdict}) &nbsp; <b>largest weight</b>: {top:.4f}</p>\n"
        f"<p>{spans}</p>\n</body></html>\n")


def attention_figure(tokens: Sequence[str], weights: np.ndarray, *, title: str,
                     query: Sequence[str], line_chars: int = 110) -> Any:
    """The same as a matplotlib figure: tokens in reading order on a white-to-red scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = float(np.max(weights)) or 1.0
    lines, line, width = [], [], 0
    for token, w in zip(tokens, weights, strict=True):
        if line and width + len(token) + 1 > line_chars:
            lines.append(line)
            line, width = [], 0
        line.append((token, w / top, width))
        width += len(token) + 1
    lines.append(line)
    fig = plt.figure(figsize=(line_chars * 0.075, 0.8 + 0.2 * len(lines)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, line_chars)
    ax.set_ylim(len(lines) + 2.5, 0)
    ax.axis("off")
    ax.text(0.5, 0.8, title, fontsize=9, fontweight="bold", va="center")
    ax.text(0.5, 1.8, "query: " + " ".join(query), family="monospace", fontsize=8, va="center")
    cmap = plt.get_cmap("Reds")
    for row, items in enumerate(lines, start=3):
        for token, share, x in items:
            ax.text(x + 0.5, row, token, family="monospace", fontsize=8, va="center",
                    bbox={"facecolor": cmap(0.85 * share), "edgecolor": "none", "pad": 1.0})
    return fig


def attention_artifacts(model: AttentiveReader, reader: ReaderData, split: str,
                        index: int) -> dict[str, Artifact]:
    """The attention over question `index` of `split` (its shortened context under top-k
    filtering) as `attention_html` and `attention_png` artifacts."""
    batch = example_batch(reader, split, index)
    out = gather(model, _reading, [batch])
    length = int(batch["context_length"][0])
    weights = np.asarray(out["attention"][0, :length])
    decode = reader.vocab.decode
    tokens = decode(batch["context"][0, :length])
    query = decode(batch["query"][0, : int(batch["query_length"][0])])
    answer = decode([int(model.answer_class(batch["answer"])[0])])[0]
    prediction = decode([int(out["prediction"][0])])[0]
    title = f"attention over {split} question {index} ({len(tokens)} tokens)"
    return {
        "attention_html": Artifact.html(attention_html(
            tokens, weights, query=query, answer=answer, prediction=prediction, title=title)),
        "attention_png": Artifact.figure(attention_figure(
            tokens, weights, query=query,
            title=f"{title}; answer {answer}, prediction {prediction}")),
    }


def full_evaluation(model: AttentiveReader, ctx: EvalContext) -> dict[str, float | Artifact]:
    """The evaluation stage (`python -m experiments.evaluate RUN_DIR --stage reader`):
    validation and test `nll`/`error` over the whole splits, the share of questions whose
    answer survives top-k filtering (`answer_in_context`, the accuracy ceiling), and the
    attention over validation question `data.attention_example`."""
    data = ctx.config.data
    reader = load_data(data)
    results: dict[str, float | Artifact] = {}
    for split in ("validation", "test"):
        pipe = reader.pipeline(split, batch_size=data.eval_batch_size)
        for key, value in split_evaluator(pipe)(model, ctx).items():
            results[f"{split}/{key}"] = value
        results[f"{split}/answer_in_context"] = reader.answer_kept(split)
    results.update(attention_artifacts(model, reader, "validation", data.attention_example))
    return results
