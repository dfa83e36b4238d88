"""Small pieces every experiment shares: turning the `norm` config section into layer options."""

from __future__ import annotations

from typing import Any

from experiments.schema import NormConfig


def norm_options(norm: NormConfig, batch_size: int) -> dict[str, Any]:
    """Keyword options of `lnorm.norms.make_norm` for the configured normaliser.

    Batch norm's `unbiased: null` resolves to the paper's choice: the unbiased variance at
    batch size 4 (and below), the biased one otherwise.
    """
    if norm.name in ("layer", "rms"):
        return {"epsilon": norm.epsilon}
    if norm.name == "batch":
        unbiased = batch_size <= 4 if norm.unbiased is None else norm.unbiased
        return {"epsilon": norm.epsilon, "momentum": norm.momentum, "unbiased": unbiased}
    return {}
