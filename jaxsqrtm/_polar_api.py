"""Public ``polar`` / ``polar_matmul_count``: validation and dispatch.

As :mod:`jaxsqrtm._api` does for the roots: the public wrapper checks the array and the
knobs at trace time against the method's entry in
:data:`jaxsqrtm._methods.POLAR_TABLE`, the jitted :func:`_polar` calls the entry's
``root``, which carries its own differentiation rule.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm import _validation
from jaxsqrtm._core import Config
from jaxsqrtm._matrix import BFLOAT16
from jaxsqrtm._methods import POLAR_TABLE
from jaxsqrtm._polar import gram_matrix, is_wide

POLAR_METHODS = tuple(POLAR_TABLE)
# Methods whose products may be bfloat16: the fixed schedules.
_BFLOAT16_METHODS = ("quintic", "polar_express", "cubic", "polynomial")


class PolarInfo(NamedTuple):
    """Diagnostics returned next to the polar factor by ``return_info=True``; shapes ``(...,)``.

    Attributes:
        residual: ``||U^H U - I||_2`` on the smaller side (``U U^H`` for ``m < n``), from
            the eigenvalues of that Gram matrix (float32 products, whatever the
            ``precision``). For a matrix whose null singular values the decomposition set
            to zero (``"svd"``, ``"auto"`` at the noise floor) it is taken on the range:
            the eigenvalues of those null directions (0) are left out.
        iterations: steps taken: adaptive for ``"auto"`` (also for a matrix it then
            decomposed), the schedule's length for the fixed schedules, 0 for ``"svd"``.
        scale: the per-matrix scale ``c`` of ``X_0 = G / c``: ``||G||_F + 1e-8`` for
            ``"quintic"``, ``||G^H G||_F^(1/2)`` for ``"auto"``, 1.01 times that for the
            other schedules, ``sigma_max`` for ``"svd"``.

        products: the matrix products of the call per matrix and precision kind,
            ``{"forward": {kind: count}, "backward": {kind: count}}`` (int32 arrays,
            counted as :func:`polar_matmul_count` counts; ``"backward"``: what reverse
            mode adds), kinds ``"bfloat16"``, ``"float32"``, ``"tf32"``, ``"default"``;
            empty for ``"svd"``.
        low_precision_iterations: steps with bfloat16 products of ``precision="mixed"``
            (0 elsewhere; the fixed schedules' ``"bfloat16"`` steps are in ``products``).
        refinements: float32-residual refinement steps (``precision="mixed"``; 0
            elsewhere).

    All are diagnostics: they are not differentiated (``lax.stop_gradient``).
    ``products``, ``low_precision_iterations`` and ``refinements`` come after the first
    three fields (``None`` by default), so ``PolarInfo(residual, iterations, scale)``
    still builds one.
    """

    residual: jax.Array
    iterations: jax.Array
    scale: jax.Array
    products: dict | None = None
    low_precision_iterations: jax.Array | None = None
    refinements: jax.Array | None = None


def _check_precision(func: str, precision, method: str):
    """:func:`jaxsqrtm._validation.check_precision` (``"mixed"`` for the entries that take
    it), or ``"bfloat16"`` for a fixed schedule."""
    if isinstance(precision, str) and precision.lower() == _validation.MIXED:
        # the entry rejects it, with its reason, if it does not implement it
        POLAR_TABLE[method].configure(func, inverse=False, precision=precision, given={})
        return _validation.MIXED
    if isinstance(precision, str) and precision.lower() == BFLOAT16:
        if method not in _BFLOAT16_METHODS:
            raise ValueError(
                f"{func}: precision='bfloat16' applies to the fixed schedules "
                f"{_BFLOAT16_METHODS}, not to method={method!r}, whose accuracy needs "
                "float32 products"
            )
        return BFLOAT16
    try:
        return _validation.check_precision(func, precision)
    except ValueError:
        raise ValueError(
            f"{func}: precision must be one of ('default', 'high', 'highest', 'bfloat16') "
            f"or a jax.lax.Precision, got {precision!r}"
        ) from None


def configure(func: str, method, *, precision="highest", **knobs) -> Config:
    """Validate ``method``, ``precision`` and the knobs; ``None`` knobs take the default."""
    method = _validation.check_choice(func, "method", method, POLAR_METHODS)
    checked = _check_precision(func, precision, method)
    config = POLAR_TABLE[method].configure(func, inverse=False, precision="highest", given=knobs)
    if method == "polynomial" and config.coefficients is None:
        raise ValueError(
            f"{func}: method='polynomial' needs coefficients=((a, b, c), ...), the odd "
            "polynomial a x + b x^3 + c x^5 of each step"
        )
    return dataclasses.replace(config, precision=checked)


def polar(
    g,
    *,
    method: str = "auto",
    coefficients=None,
    max_iters: int | None = None,
    precision="highest",
    return_info: bool = False,
):
    """Polar factor ``U = G (G^H G)^(-1/2)`` of ``(..., m, n)`` matrices: ``U V^H`` of the thin SVD.

    For ``G = P S Q^H`` (thin SVD) ``U = P Q^H``: the orthogonal (unitary) matrix nearest
    to ``G``, with orthonormal columns for ``m >= n`` and rows for ``m < n``, and
    ``G = U H`` with ``H = (G^H G)^(1/2)``. This is ``msign(G)``, the orthogonalisation of
    Muon-family optimisers. Every method runs on the side with the smaller Gram matrix,
    ``min(m, n)`` square; a product costs ``max(m, n) min(m, n)^2`` multiply-adds (the
    Gram matrix and the step) or ``min(m, n)^3`` (its square).

    Methods:

    * ``"auto"`` (default), the accurate mode: ``X_0 = G / c`` with
      ``c = ||G^H G||_F^(1/2) >= sigma_max``, then optimally scaled Newton–Schulz steps
      ``X <- alpha X (3 I - alpha^2 X^H X) / 2`` (2 products each; ``alpha`` from a
      power-iteration estimate of ``||I - X^H X||_2``), each matrix until it has
      converged, to float32 round-off: 8 to 10 steps at condition number ``1e2``, 13 to
      15 at ``1e4`` (measured). Rank-deficient input: singular values at or below the noise floor
      ``4 eps c`` (``eps`` of the compute dtype; ``4.8e-7 c`` in float32) cannot
      converge within ``max_iters`` (default 17 in float32, 38 in float64, the fewest
      steps in which such a singular value could); such a matrix, and any with a
      non-finite result, is computed by ``"svd"`` instead, under ``lax.cond`` only when
      the batch has one (both branches run under ``jax.vmap``). In float32 that is also
      the path of condition numbers beyond about ``1e5`` (measured: ``1e6`` takes it,
      ``1e4`` does not).
    * ``"svd"``: ``P Q^H`` from ``jnp.linalg.svd``, the singular values at or below
      ``4 eps sigma_max`` set to zero. A rank-deficient ``G`` gives the partial isometry
      on its range: ``U = 0`` on the null space (``U v = 0`` for ``G v = 0``).
    * ``"quintic"``: optax's ``orthogonalize_via_newton_schulz`` (Muon): ``G`` divided by
      ``||G||_F + 1e-8``, then ``max_iters`` (5) steps ``X <- a X + b X (X^H X) +
      c X (X^H X)^2`` with ``(a, b, c) = (3.4445, -4.7750, 2.0315)``, 3 products each. Its
      coefficients are tuned past convergence: singular values come out in about
      ``[0.7, 1.2]``, not 1, and those below about ``1e-3 ||G||_F`` below 1/2.
    * ``"polar_express"``: the Polar Express schedule (Amsel, Persson, Musco & Gower,
      2025): per-step minimax-optimal odd quintics for singular values in
      ``[1e-4, 1]``, computed in float64 at import, with a safety factor of 1.01 on all
      steps but the last and on the normalisation ``c = 1.01 ||G^H G||_F^(1/2)``.
      8 steps, 24 products: ``||U^H U - I||_2 <= 1e-2`` for ``sigma_min / sigma_max >=
      1e-3`` (for ``min(m, n)`` up to about ``1.7e4``).
    * ``"cubic"``: the classic Newton–Schulz step ``X (3 I - X^H X) / 2``, 26 steps (52
      products) from the same normalisation: the same guarantee as ``"polar_express"``.
    * ``"polynomial"``: your own schedule, ``coefficients=((a, b, c), ...)`` one row per
      step (``(a, b)`` rows for cubic steps; a single row is one step), normalised as
      ``"polar_express"``. Checked at trace time (shape, finite, non-empty).

    The fixed schedules run ``max_iters`` steps (default: the table's length), their last
    row repeated beyond the table.

    Derivatives: ``"auto"`` and ``"svd"`` have a ``jax.custom_jvp`` rule with the
    derivative of the exact polar factor at the computed one,
    ``dU = U Omega + (I - U U^H) dG H^+`` with ``H Omega + Omega H = U^H dG - dG^H U``
    (``m >= n``; transposed otherwise), solved by the Lyapunov sign iteration replaying
    the forward's step sizes (``"auto"``: ``4k + 1`` products for ``k`` steps, ``8k + 1``
    for ``m != n``, where ``H^(-1)`` is a second solve) or in the SVD's basis
    (``"svd"``): finite at repeated singular values, where autodiff of an SVD divides by
    ``s_i^2 - s_j^2`` (NaN, or wrong where JAX drops those terms). At a rank-deficient
    ``G`` the equation is solved on the range: the derivative of the partial isometry
    among matrices of the same rank. The fixed schedules are differentiated by autodiff
    through their steps: the derivative of what they compute.

    Args:
        g: ``(..., m, n)`` matrices, any aspect ratio and batch shape, float16, bfloat16,
            float32, float64, complex64 or complex128 (half precision is computed in
            float32 and cast back).
        method: one of :data:`POLAR_METHODS`.
        coefficients: the schedule of ``method="polynomial"`` (required there, an error
            elsewhere): a sequence of ``(a, b, c)`` or ``(a, b)`` rows, or an array of
            shape ``(steps, 3)``.
        max_iters: ``"auto"``: cap on its steps (a larger one lets noise-floor singular
            values converge to arbitrary directions instead of 0); the schedules: the
            number of steps.
        precision: matmul precision of the steps: ``"highest"`` (default), ``"high"``,
            ``"default"``, a :class:`jax.lax.Precision`, or ``"bfloat16"`` (fixed
            schedules only): bfloat16 operands with float32 accumulation, as Muon runs on
            accelerators; or ``"mixed"`` (``"auto"`` only, real float32 input): bfloat16
            steps and float32-residual refinement where the condition number is at most
            about 300 (a float32 QR first when ``m != n``), ``"highest"``'s computation
            elsewhere, with float32 accuracy (module doc of
            :mod:`jaxsqrtm._methods.polar`; the README's *Mixed precision* section).
            ``"auto"`` stops at float32 round-off, which products of lower precision
            (TF32 or bfloat16 passes on accelerators) may not reach: its matrices then
            run ``max_iters`` steps and are decomposed.
        return_info: also return a :class:`PolarInfo`.

    Returns:
        ``U`` of the shape and dtype of ``g``, and with ``return_info=True`` a
        :class:`PolarInfo`. A zero matrix gives ``U = 0``; NaN or Inf entries give NaN.

    Raises:
        TypeError: integer or boolean ``g``; ``coefficients`` that are not numbers; a
            non-integer ``max_iters``.
        ValueError: fewer than 2 dimensions; an unknown method or precision;
            ``"bfloat16"`` with ``"auto"`` or ``"svd"`` or complex input; ``"mixed"`` with
            another method than ``"auto"`` or input that is not real float32; coefficients of
            the wrong shape or not finite, or given to another method than
            ``"polynomial"``.

    Accuracy (float32, against float64 SVD; measured figures in the README):
    ``"auto"`` reaches about float32 SVD's accuracy, ``eps`` times the condition number,
    with ``||U^H U - I||_2`` at most about ``2e-6`` (float32 SVD's: ``3e-6``).

    Transforms: ``jit``, ``vmap``, ``jax.jvp``, ``jax.grad``/``jax.vjp``, second order
    (``"auto"``, ``"svd"``: their rules call themselves), ``shard_map``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxsqrtm
        >>> g = jnp.array([[3.0, 0.0], [0.0, -2.0], [0.0, 0.0]])
        >>> print(jnp.round(jaxsqrtm.polar(g), 4))
        [[ 1.  0.]
         [ 0. -1.]
         [ 0.  0.]]
        >>> u, info = jaxsqrtm.polar(g, method="polar_express", return_info=True)
        >>> bool(info.residual < 1e-2)
        True
        >>> loss = lambda g: jnp.sum(jaxsqrtm.polar(g) * jnp.arange(6.0).reshape(3, 2))
        >>> bool(jnp.all(jnp.isfinite(jax.grad(loss)(jnp.eye(3, 2)))))
        True
    """
    func = "polar"
    g = _validation.check_matrices(func, g, "g", square=False)
    config = configure(
        func, method, precision=precision, coefficients=coefficients, max_iters=max_iters
    )
    if config.precision == BFLOAT16 and jnp.iscomplexobj(g):
        raise ValueError(f"{func}: precision='bfloat16' needs real input, got {g.dtype}")
    if config.precision == _validation.MIXED:
        _validation.check_mixed_dtype(func, g.dtype, "g")
    return_info = _validation.check_bool(func, "return_info", return_info)
    return _polar(g, config, return_info)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _polar(g, config: Config, return_info: bool):
    dtype = _validation.compute_dtype(g.dtype)
    batch = g.shape[:-2]
    if g.size == 0:
        out = jnp.zeros_like(g)
        zeros = jnp.zeros(batch, _validation.compute_dtype(jnp.finfo(g.dtype).dtype))
        counts = jnp.zeros(batch, jnp.int32)
        info = PolarInfo(
            zeros,
            counts,
            zeros,
            POLAR_TABLE[config.method].static_products(config, counts),
            counts,
            counts,
        )
        return (out, info) if return_info else out
    x = g.astype(dtype)
    result = POLAR_TABLE[config.method].root(x, config)
    out = result.out.astype(g.dtype)
    if not return_info:
        return out
    residual = _residual(lax.stop_gradient(result.out), result.nullity)
    zeros = jnp.zeros_like(result.iterations)

    def given_or_zeros(value):
        return zeros if value is None else value

    products = result.products
    if products is None:
        products = POLAR_TABLE[config.method].static_products(config, zeros)
    return out, PolarInfo(
        residual,
        result.iterations,
        lax.stop_gradient(result.scale),
        products,
        given_or_zeros(result.low_precision_iterations),
        given_or_zeros(result.refinements),
    )


def _residual(u, nullity):
    """``||U^H U - I||_2`` on the smaller side, the ``nullity`` smallest eigenvalues left out."""
    gram = gram_matrix(u, wide=is_wide(u.shape), precision=lax.Precision.HIGHEST)
    eigenvalues = jnp.linalg.eigvalsh(gram)  # ascending
    counted = jnp.arange(eigenvalues.shape[-1]) >= nullity[..., None]
    return jnp.max(jnp.where(counted, jnp.abs(eigenvalues - 1), 0), axis=-1)


def polar_matmul_count(
    method: str,
    *,
    backward: bool = False,
    coefficients=None,
    max_iters: int | None = None,
) -> int | None:
    """Matrix products per matrix of one :func:`polar` call, as its method's entry counts them.

    Every product is on the smaller Gram side of an ``(m, n)`` matrix: ``max(m, n)
    min(m, n)^2`` multiply-adds (a Gram matrix, or the step's product with ``X``) or
    ``min(m, n)^3`` (the Gram matrix squared), so the count times
    ``max(m, n) min(m, n)^2`` bounds the work. The fixed schedules take 3 products a
    quintic step and 2 a cubic one (the normalisation's Gram matrix is the first step's);
    ``backward`` adds reverse-mode autodiff through them, counted as twice the forward.
    ``None`` for ``"auto"``, whose step count depends on the input (``k`` steps,
    ``info.iterations``: ``2k`` forward; backward, or a ``jax.jvp``, ``4k + 1`` more:
    ``4k - 2`` of ``min(m, n)^3`` for the Lyapunov solve and 3 of ``max(m, n)
    min(m, n)^2``; for ``m != n`` ``8k + 1``, with the solve for ``H^(-1)`` and 2 more
    products), and for ``"svd"``, which is not built from products. A call's own counts,
    per matrix and precision kind (also for ``precision="mixed"``), are in
    :attr:`PolarInfo.products`.

    Example:
        >>> import jaxsqrtm
        >>> jaxsqrtm.polar_matmul_count("quintic"), jaxsqrtm.polar_matmul_count("polar_express")
        (15, 24)
    """
    func = "polar_matmul_count"
    config = configure(func, method, coefficients=coefficients, max_iters=max_iters)
    backward = _validation.check_bool(func, "backward", backward)
    return POLAR_TABLE[config.method].cost(config, backward)
