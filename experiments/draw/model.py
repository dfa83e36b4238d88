"""DRAW (Gregor et al. 2015) with selective attention, as in the paper (docs/paper.md §4.4, §6.4).

Per glimpse t = 1..T, with `c_0 = 0` and the decoder state starting at zero (as the Blocks
code of jbornschein/draw, which the paper's setup follows):

    x_hat = x - sigmoid(c_{t-1})
    r_t   = gamma [F_y x F_x^T, F_y x_hat F_x^T]                 (N_read x N_read read)
    h_enc = LSTM_enc(h_enc, [r_t, h_dec_{t-1}])
    z_t   = mu(h_enc) + exp(log_sigma(h_enc)) eps_t,  eps_t ~ N(0, I) fresh every glimpse
    h_dec = LSTM_dec(h_dec, z_t)
    c_t   = c_{t-1} + (1 / gamma) F_y^T w(h_dec) F_x             (N_write x N_write write)

The read attention comes from `h_dec_{t-1}`, the write attention from `h_dec_t`, each through
one linear layer to `(g~y, g~x, log delta, log sigma^2, log gamma)`. The glimpses are one
`jax.lax.scan`; the noise `eps[T, B, Z]` is an input, so the caller decides where it comes
from (the training rng, a per-example evaluation key, the prior for samples).

Normalisation lives in the two LSTMs only (`lnorm.cells.LSTMCell`): layer (and RMS, batch)
norm use `cell_variant` ("draw": only `tanh(N(c_t))`, the paper's DRAW model; "paper": the
full LN-LSTM), `none` is the plain LSTM, `weight` weight-normalises the LSTMs' matrices (with
g = 1, b = 0: no data-dependent init, whose per-layer inputs only exist inside the glimpse
loop). Batch norm keeps statistics per glimpse (`t_max = T`).

Under `train.dtype=bfloat16` the LSTMs and linear layers compute in bfloat16 (the parameters'
dtype); the attention geometry (filter centres and widths in pixels), the read and write, the
canvas (a sum of T writes: the Bernoulli logits) and the latent distribution (the KL terms of
the loss) stay float32.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm.cells import LSTMCell
from lnorm.norms import NormSpec
from lnorm.precision import loop_invariant

Array = jax.Array

# Keeps exp() of the attention's log-parameters finite (a guard, it does not bind in practice:
# e^10 is a stride or blur far beyond the image, e^-10 a far sharper filter than a pixel).
LOG_PARAM_LIMIT = 10.0
FILTER_EPS = 1e-4  # added to each filter row's sum (jbornschein/draw), an empty row stays ~0
CELL_VARIANTS = ("draw", "paper")
_ACTIVATION_NORMS = ("layer", "rms", "batch")  # the norms that have a cell variant to choose


class Attention(NamedTuple):
    """Attention parameters of a batch, each `[B]`, centres in 1-indexed pixel coordinates."""

    center_y: Array
    center_x: Array
    delta: Array
    sigma: Array
    gamma: Array


def attention_params(raw: Array, image_shape: tuple[int, int], n: int) -> Attention:
    """`raw[B, 5] = (g~y, g~x, log delta, log sigma^2, log gamma)` to an `Attention` (Gregor
    et al. Eq. 21-24): `g = (A + 1) / 2 (g~ + 1)`, `delta = (max(A, B) - 1) / (n - 1) e^{log
    delta}`, `sigma = e^{log sigma^2 / 2}`, `gamma = e^{log gamma}`; the log-parameters are
    clipped to +-`LOG_PARAM_LIMIT`.

    (jbornschein/draw maps `g = A / 2 (g~ + 1)` on 0-indexed pixels, half a pixel off the
    image's centre; the linear layer that produces g~ absorbs the difference.)
    """
    height, width = image_shape
    gy, gx = raw[:, 0], raw[:, 1]
    log_delta, log_sigma2, log_gamma = jnp.split(
        jnp.clip(raw[:, 2:5], -LOG_PARAM_LIMIT, LOG_PARAM_LIMIT), 3, axis=-1
    )
    stride = (max(height, width) - 1) / (n - 1)
    return Attention(
        center_y=(height + 1) / 2 * (gy + 1),
        center_x=(width + 1) / 2 * (gx + 1),
        delta=stride * jnp.exp(log_delta[:, 0]),
        sigma=jnp.exp(log_sigma2[:, 0] / 2),
        gamma=jnp.exp(log_gamma[:, 0]),
    )


def filterbank(center: Array, delta: Array, sigma: Array, *, n: int, size: int) -> Array:
    """`F[B, n, size]`: row i is a Gaussian over pixels a = 1..size centred at
    `mu_i = center + (i - n/2 - 0.5) delta` (i = 1..n, 1-indexed as in Gregor et al. Eq. 19;
    a 0-indexed i would shift the grid by one stride), normalised to sum 1 (+`FILTER_EPS`, so a
    window off the image reads zeros instead of its nearest edge)."""
    offsets = jnp.arange(1, n + 1, dtype=jnp.float32) - n / 2 - 0.5
    mu = center[:, None] + delta[:, None] * offsets  # [B, n]
    pixels = jnp.arange(1, size + 1, dtype=jnp.float32)
    f = jnp.exp(-jnp.square(pixels - mu[..., None]) / (2 * jnp.square(sigma)[:, None, None]))
    return f / (jnp.sum(f, axis=-1, keepdims=True) + FILTER_EPS)


def filterbanks(att: Attention, image_shape: tuple[int, int], n: int) -> tuple[Array, Array]:
    """`(F_y[B, n, H], F_x[B, n, W])` of an attention."""
    height, width = image_shape
    fy = filterbank(att.center_y, att.delta, att.sigma, n=n, size=height)
    fx = filterbank(att.center_x, att.delta, att.sigma, n=n, size=width)
    return fy, fx


def read(images: Array, fy: Array, fx: Array, gamma: Array) -> Array:
    """`gamma F_y x F_x^T`: the `[B, ..., n, n]` glimpses of `images[B, ..., H, W]` (one
    attention per example, shared by its channels)."""
    glimpse = jnp.einsum("bih,b...hw,bjw->b...ij", fy, images, fx)
    return gamma.reshape(-1, *(1,) * (glimpse.ndim - 1)) * glimpse


def write(patch: Array, fy: Array, fx: Array, gamma: Array) -> Array:
    """`(1 / gamma) F_y^T w F_x`: the `[B, H, W]` canvas update of `patch[B, n, n]`."""
    return jnp.einsum("bih,bij,bjw->bhw", fy, patch, fx) / gamma[:, None, None]


def gaussian_kl(mu: Array, log_sigma: Array) -> Array:
    """`KL(N(mu, sigma^2) || N(0, 1))` summed over the last axis, analytic."""
    return 0.5 * jnp.sum(jnp.square(mu) + jnp.exp(2 * log_sigma) - 2 * log_sigma - 1, axis=-1)


def log_density_ratio(z: Array, eps: Array, log_sigma: Array) -> Array:
    """`log N(z; 0, I) - log N(z; mu, sigma^2)` for `z = mu + sigma eps`, summed over the last
    axis: one sample's `log p(z) - log q(z | x)`, whose mean is `-KL` (importance weights)."""
    return jnp.sum(0.5 * jnp.square(eps) + log_sigma - 0.5 * jnp.square(z), axis=-1)


def _float32(x: Array) -> Array:
    """`x` in at least float32: what a bfloat16 layer hands to the float32 parts."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class DrawOutput(NamedTuple):
    """`logits[B, H, W]`: the final canvas c_T (Bernoulli logits); `kl[T, B]` and
    `log_ratio[T, B]` per glimpse (see `gaussian_kl`, `log_density_ratio`); `canvases[T, B, H,
    W]`: every c_t, when asked for."""

    logits: Array
    kl: Array
    log_ratio: Array
    canvases: Array | None


class DRAW(nnx.Module):
    """DRAW with read/write attention; `__call__(x, eps)` encodes and reconstructs `x`,
    `generate(eps)` draws from the prior. `eps[T, B, latent]` sets the number of glimpses T.

    `norm.name` picks the LSTMs' normaliser; `cell_variant` ("draw" | "paper") which LSTM
    equations layer/RMS/batch norm use (`none` and `weight` have none to choose). Weights start
    as in jbornschein/draw: N(0, `init_std`^2), biases 0 (`init_std=None`: the library's
    defaults, LeCun-normal and orthogonal recurrent matrices).
    """

    def __init__(
        self,
        *,
        norm: NormSpec,
        glimpses: int = 64,
        encoder_features: int = 256,
        decoder_features: int = 256,
        latent: int = 100,
        read_size: int = 2,
        write_size: int = 5,
        image_shape: tuple[int, int] = (28, 28),
        cell_variant: str = "draw",
        init_std: float | None = 0.01,
        rngs: nnx.Rngs,
    ):
        if cell_variant not in CELL_VARIANTS:
            raise ValueError(
                f"DRAW: cell_variant={cell_variant!r}, expected one of {CELL_VARIANTS}"
            )
        if norm.placement != "paper":
            raise ValueError(
                f"DRAW: norm.placement={norm.placement!r} is not defined for DRAW, whose "
                "normaliser sits inside the two LSTMs only; use placement='paper'"
            )
        if min(read_size, write_size) < 2:
            raise ValueError(
                f"DRAW: read_size={read_size}, write_size={write_size}; the attention grid's "
                "stride (max(A, B) - 1) / (N - 1) needs N >= 2"
            )
        variant = cell_variant if norm.name in _ACTIVATION_NORMS else "paper"
        inits = {}
        if init_std is not None:
            normal = nnx.initializers.normal(init_std)
            inits = {"kernel_init": normal, "recurrent_kernel_init": normal}
        linear_init = inits.get("kernel_init", nnx.initializers.lecun_normal())

        def cell(din: int, dout: int) -> LSTMCell:
            return LSTMCell(
                din, dout, norm=norm, variant=variant, t_max=glimpses, rngs=rngs, **inits
            )

        def linear(din: int, dout: int) -> nnx.Linear:
            return nnx.Linear(din, dout, kernel_init=linear_init, rngs=rngs)

        self.encoder = cell(2 * read_size**2 + decoder_features, encoder_features)
        self.decoder = cell(latent, decoder_features)
        self.posterior = linear(encoder_features, 2 * latent)  # (mu, log sigma)
        self.read_attention = linear(decoder_features, 5)
        self.write_attention = linear(decoder_features, 5)
        self.write_patch = linear(decoder_features, write_size**2)
        self.glimpses = glimpses
        self.latent = latent
        self.read_size = read_size
        self.write_size = write_size
        self.image_shape = tuple(image_shape)

    def noise(self, rng: Array, batch_size: int) -> Array:
        """`eps[T, B, latent]` ~ N(0, I): an independent draw for every glimpse."""
        return jax.random.normal(rng, (self.glimpses, batch_size, self.latent))

    def _check(self, eps: Array, batch: int | None = None) -> None:
        if eps.ndim != 3 or eps.shape[0] != self.glimpses or eps.shape[2] != self.latent:
            raise ValueError(
                f"DRAW: eps has shape {eps.shape}, expected [glimpses={self.glimpses}, batch, "
                f"latent={self.latent}]"
            )
        if batch is not None and eps.shape[1] != batch:
            raise ValueError(f"DRAW: eps has batch {eps.shape[1]}, the images {batch}")

    def _write(self, dec_state: tuple[Array, Array], canvas: Array, z: Array, t: Array):
        """The decoder step on `z` and its write into the canvas."""
        dec_state, h_dec = self.decoder(dec_state, z.astype(dec_state[1].dtype), t=t)
        raw = _float32(self.write_attention(h_dec))
        att = attention_params(raw, self.image_shape, self.write_size)
        fy, fx = filterbanks(att, self.image_shape, self.write_size)
        patch = self.write_patch(h_dec).reshape(-1, self.write_size, self.write_size)
        return dec_state, canvas + write(patch, fy, fx, att.gamma)

    def _glimpse(self, carry, inputs, x: Array):
        canvas, enc_state, dec_state = carry
        eps, t = inputs
        h_dec = dec_state[1]
        att = attention_params(_float32(self.read_attention(h_dec)), self.image_shape,
                               self.read_size)
        fy, fx = filterbanks(att, self.image_shape, self.read_size)
        r = read(jnp.stack([x, x - jax.nn.sigmoid(canvas)], axis=1), fy, fx, att.gamma)
        r = r.reshape(r.shape[0], -1).astype(h_dec.dtype)  # [B, 2 n^2]: x's glimpse, x_hat's
        enc_state, h_enc = self.encoder(enc_state, jnp.concatenate([r, h_dec], axis=-1), t=t)
        mu, log_sigma = jnp.split(_float32(self.posterior(h_enc)), 2, axis=-1)
        z = mu + jnp.exp(log_sigma) * eps
        dec_state, canvas = self._write(dec_state, canvas, z, t)
        out = (gaussian_kl(mu, log_sigma), log_density_ratio(z, eps, log_sigma), canvas)
        return (canvas, enc_state, dec_state), out

    def _scan(self, step, carry, xs):
        """`jax.lax.scan` of `step(model, carry, x)`, threading batch-norm statistics (the
        parameters enter the loop in float32, where their gradient is summed over the steps)."""
        graphdef, stats, params, rest = nnx.split(self, nnx.BatchStat, nnx.Param, ...)
        params, narrow = loop_invariant(params)

        def body(c, x):
            carry, stats = c
            model = nnx.merge(graphdef, stats, narrow(params), rest)
            carry, out = step(model, carry, x)
            return (carry, nnx.state(model, nnx.BatchStat)), out

        (carry, stats), out = jax.lax.scan(body, (carry, stats), xs)
        nnx.update(self, stats)
        return carry, out

    def __call__(self, x: Array, eps: Array, *, keep_canvases: bool = False) -> DrawOutput:
        """Encodes and reconstructs `x[B, H, W]` (values in [0, 1]) with noise `eps[T, B, Z]`."""
        x = jnp.asarray(x, jnp.float32)
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"DRAW: images of shape {x.shape}, expected [B, *{self.image_shape}]")
        batch = x.shape[0]
        self._check(eps, batch)
        carry = (
            jnp.zeros((batch, *self.image_shape), jnp.float32),
            self.encoder.initial_state(batch),
            self.decoder.initial_state(batch),
        )

        def step(model, carry, inputs):
            carry, (kl, ratio, canvas) = model._glimpse(carry, inputs, x)
            return carry, (kl, ratio, canvas if keep_canvases else None)

        (canvas, _, _), (kl, ratio, canvases) = self._scan(
            step, carry, (eps, jnp.arange(self.glimpses))
        )
        return DrawOutput(canvas, kl, ratio, canvases)

    def generate(self, eps: Array) -> Array:
        """Canvases `c_t[T, B, H, W]` (logits) decoded from prior samples `z_t = eps[t]`."""
        self._check(eps)
        batch = eps.shape[1]
        carry = (
            jnp.zeros((batch, *self.image_shape), jnp.float32),
            self.decoder.initial_state(batch),
        )

        def step(model, carry, inputs):
            canvas, dec_state = carry
            z, t = inputs
            dec_state, canvas = model._write(dec_state, canvas, z, t)
            return (canvas, dec_state), canvas

        _, canvases = self._scan(step, carry, (eps, jnp.arange(self.glimpses)))
        return canvases
