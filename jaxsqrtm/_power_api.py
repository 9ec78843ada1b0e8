"""Public ``fractional_matrix_power`` / ``power_matmul_count``: validation and dispatch.

As :mod:`jaxsqrtm._api` does for the square roots: the public wrapper checks the array,
the exponent and the knobs at trace time against the method's entry in
:data:`jaxsqrtm._methods.POWER_TABLE`; the jitted :func:`_power` adds the ridge and calls
the entry's ``root``, which carries its own differentiation rule.
"""

from __future__ import annotations

import fractions
import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsqrtm import _sign, _validation
from jaxsqrtm._core import Config, summed_products
from jaxsqrtm._matrix import eye_like, frobenius_norm, mm, product_kind, spectral_bound, symmetrize
from jaxsqrtm._methods import POWER_TABLE
from jaxsqrtm._methods.fractional_power import matrix_power

POWER_METHODS = tuple(POWER_TABLE)
# A float t is read as +-1/p when 1/|t| is this close to an integer, relatively.
_EXPONENT_RTOL = 1e-9


class PowerInfo(NamedTuple):
    """Diagnostics returned next to ``X = A^t`` by ``return_info=True``; shapes ``(...,)``.

    Both residuals vanish exactly when every eigenvalue of ``X^p`` is either that of the
    exact power of ``A`` or 0 (an eigenvalue that the PSD semantics dropped), so they are
    small for the pseudo-inverse of a rank-deficient ``A`` and for the root of the PSD part
    of an indefinite one, and large where an iteration stopped short or diverged.

    Attributes:
        residual: for ``t = -1/p``, ``||Y A Y - Y||_F / ||Y||_F`` with ``Y = X^p`` (Penrose's
            condition for ``Y = A^+``: ``||Y (A Y - I)||`` relative, the error of
            ``X^p A = I`` on the range of ``X``); for ``t = 1/p``,
            ``||S S - S A||_F / ||S||_F^2`` with ``S = X^p`` (``||S (S - A)||``: the error
            of ``X^p = A`` on the range of ``X``, where ``S A = S A_+``). ``A`` is the
            input's symmetric part with the ridge added; 0 where ``X = 0``. Computed with
            ``A / c`` and ``X c^(-t)`` (no overflow), at a cost of ``power_cost(p) + 2``
            products. Float32 cannot make it smaller than about ``eps kappa`` for
            ``t < 0`` (``kappa`` the condition number on the range; 0.1 at ``1e6``):
            that is the relative accuracy of ``X^p`` itself there.
        iterations: iterations of ``"auto"``, summed over its square roots and its
            coupled iteration; 0 for ``"eigh"``.
        converged: ``X`` is finite and every one of its iterations met its stopping rule
            or was replaced by the decomposition (``"auto"`` replaces an iteration that
            did not converge in ``max_iters`` steps, so ``False`` means non-finite
            input, or a non-finite result of ``"eigh"``).
        scale: ``c = ||A^2||_F^(1/2) = (sum l^4)^(1/4)``, an upper bound of the largest
            eigenvalue within ``n^(1/4)`` (:func:`jaxsqrtm._matrix.spectral_bound`): the
            unit of ``ridge``. Without the ridge.
        products: the matrix products of the call per matrix and precision kind,
            ``{"forward": {kind: count}, "backward": {kind: count}}`` (int32 arrays;
            ``"backward"``: what reverse mode adds), kinds as in
            :attr:`jaxsqrtm.RootInfo.products` (``"float32"`` for ``"highest"``,
            ``"bfloat16"`` and ``"float32"`` for ``"mixed"``): the square roots' counts,
            the coupled iteration's (steps, refinements, the derivative's solves) and the
            products around them; the normalisations' derivatives, the residual of
            ``return_info`` and a decomposition are not counted (empty mappings for
            ``"eigh"``). Summed by :func:`power_matmul_count`.
        low_precision_iterations: iterations with bfloat16 products, summed over the
            square roots and the coupled iteration (``precision="mixed"``; 0 elsewhere).
        refinements: float32-residual refinement steps, summed likewise
            (``precision="mixed"``; 0 elsewhere).

    With these, Shampoo's failure rule (discard a root whose iteration did not converge,
    whose residual is at least 0.1, or that is not finite) applies unchanged: a
    rank-deficient statistic's pseudo-inverse root is not a failure.

    ``products``, ``low_precision_iterations`` and ``refinements`` come after the first
    four fields, so ``PowerInfo(residual, iterations, converged, scale)`` still builds
    one (they default to ``None``), but a ``PowerInfo`` unpacks into seven names.
    """

    residual: jax.Array
    iterations: jax.Array
    converged: jax.Array
    scale: jax.Array
    products: dict | None = None
    low_precision_iterations: jax.Array | None = None
    refinements: jax.Array | None = None


def exponent(func: str, t) -> tuple[int, bool]:
    """``(p, inverse)`` with ``t = +-1/p``, ``p >= 1`` an integer, ``inverse = t < 0``.

    ``t`` is a Python ``int``/``float``, a NumPy scalar or a :class:`fractions.Fraction`
    (static: it selects the algorithm). A float must be within a relative ``1e-9`` of
    ``+-1/p`` (``-1 / 3`` is accepted).
    """
    if isinstance(t, bool) or not isinstance(t, (numbers.Rational, numbers.Real, np.number)):
        raise TypeError(
            f"{func}: t must be a Python number or a fractions.Fraction (static), "
            f"got {t!r} of type {type(t).__name__}"
        )
    message = f"{func}: t must be +-1/p for an integer p >= 1 (1, -1/2, 1/3, -1/4, ...), got {t!r}"
    if isinstance(t, numbers.Rational) and not isinstance(t, (bool, np.number)):
        t = fractions.Fraction(t)
        if t == 0 or abs(t.numerator) != 1:
            raise ValueError(message)
        return t.denominator, t < 0
    t = float(t)
    if not np.isfinite(t) or t == 0:
        raise ValueError(message)
    reciprocal = 1 / abs(t)
    p = round(reciprocal)
    if p < 1 or abs(reciprocal - p) > _EXPONENT_RTOL * p:
        raise ValueError(message)
    return int(p), t < 0


def configure(func: str, method, t, *, precision="highest", **knobs) -> Config:
    """Validate ``method``, the exponent and the keywords; ``None`` knobs take the default."""
    method = _validation.check_choice(func, "method", method, POWER_METHODS)
    p, inverse = exponent(func, t)
    return POWER_TABLE[method].configure(
        func, inverse=inverse, precision=precision, given={"p": p, **knobs}
    )


def fractional_matrix_power(
    a,
    t,
    *,
    method: str = "auto",
    ridge: float | None = None,
    max_iters: int | None = None,
    precision="highest",
    return_info: bool = False,
):
    """Fractional power ``A^t``, ``t = +-1/p``, of symmetric positive semi-definite matrices.

    ``A^(1/p)`` is the PSD ``p``-th root and ``A^(-1/p)`` its (pseudo-)inverse: for
    ``A = V diag(l) V^H``, ``V diag(l^t) V^H``. Any integer ``p >= 1`` (``t = 1``,
    ``-1/2``, ``1/3``, ``-1/4``, ``-1/6``, ... ; tested for ``p`` = 1 to 8, 12 and 16);
    SciPy's name, for this subset of its exponents.

    Methods (:data:`jaxsqrtm.POWER_METHODS`):

    * ``"auto"`` (the default), matmul-only, built on the accurate square root of
      :func:`jaxsqrtm.sqrtm`. For ``p = 2^j`` it composes square roots:
      ``A^(-1/4) = inv_sqrtm(sqrtm(A))``, ``A^(1/8) = sqrtm(sqrtm(sqrtm(A)))``,
      ``A^(-1) = inv_sqrtm(A)^2``. For ``p = 2^j q``, ``q >= 3`` odd, it takes
      ``B = A^(1/2^(j+1))`` by square roots, ``X = B^(-1/q)`` by a coupled Newton
      iteration (Guo & Higham 2006) with optimal per-step scaling, run per matrix to
      convergence, and returns ``X^2`` (``t < 0``) or ``B X^(q-2)`` (``t > 0``):
      ``A^(-1/3) = (A^(1/2))^(-2/3)``, ``A^(1/6) = A^(1/4) (A^(1/4))^(-1/3)``; an
      inverse root of even ``p`` is ``(A^(1/2^j))^(-1/q)`` itself
      (``A^(-1/6) = (A^(1/2))^(-1/3)``). Each iteration runs at a condition number of
      ``sqrt(kappa)`` or less. Cost: 3 products
      a square-root step (about 6 at condition number ``1e2``, 12 at ``1e6``, fewer for
      the later roots), 4 a coupled step for ``q = 3``; ``A^(-1/4)`` costs about 1.6
      times ``inv_sqrtm(A)`` (:func:`power_matmul_count` counts them from
      :attr:`PowerInfo.iterations`).
    * ``"eigh"``: ``V diag(l^t) V^H`` from ``jnp.linalg.eigh``.

    PSD semantics (both methods, as :func:`jaxsqrtm.sqrtm`'s ``"auto"`` and ``"eigh"``):
    eigenvalues at or below the noise floor ``2 n^(1/4) eps max|l|`` (negative ones
    included) count as 0. ``t > 0`` gives the root of the PSD part ``A_+``; ``t < 0`` the
    pseudo-inverse power, ``l^t`` on the range and 0 on the null space. ``"auto"`` takes
    the decomposition for a matrix whose spectrum reaches the noise floor (or that did
    not converge, or gave a non-finite value), only when the batch has one (both
    branches run under ``jax.vmap``).

    Ridge: ``ridge=r`` computes ``(A + r c I)^t`` with ``c = PowerInfo.scale``
    (``(sum l^4)^(1/4)``, an upper bound of the largest eigenvalue), the same
    ``r c`` shift that :func:`jaxsqrtm.sqrtm`'s ridge applies, here kept: the
    regularised root of second-order optimisers (Shampoo's ``epsilon``), whose
    condition number is at most ``(1 + r) / r``, finite on the null space
    (``(r c)^t`` there). Without it (``None``, the default) the null space gives 0.
    The PSD semantics then apply to ``A + r c I``.

    Args:
        a: ``(..., n, n)`` real symmetric or complex Hermitian PSD matrices (float16,
            bfloat16, float32, float64, complex64, complex128), any batch axes. Only the
            Hermitian part ``(A + A^H) / 2`` is used.
        t: the exponent ``+-1/p`` (static): an ``int``, a ``float`` within ``1e-9``
            relative of ``+-1/p`` (``-1 / 3`` works) or a :class:`fractions.Fraction`.
        method: ``"auto"`` (default) or ``"eigh"``.
        ridge: ``r`` in ``[0, 1)``, relative to the scale ``c``; ``None`` for none.
        max_iters: cap on each adaptive iteration of ``"auto"`` (default 40).
        precision: matmul precision, ``"highest"`` by default, ``"high"``, ``"default"``,
            or ``"mixed"`` (``"auto"`` only, real float32, bfloat16 or float16 input), as
            for :func:`jaxsqrtm.sqrtm`: bfloat16 products (float32 accumulation) where the
            iterations' measurements allow them, float32 residuals to recover float32
            accuracy. The square roots take their mixed mode; the coupled iteration takes
            bfloat16 steps where the condition number of ``B`` is at most ``1e2``, then
            Newton steps with float32 residuals and bfloat16 conjugate-gradient solves of
            their Fréchet-derivative equation, which its derivative solves too (refined)
            up to condition number ``1e3`` (20 for ``t > 0``), and the other matrices as
            ``"highest"`` (:mod:`jaxsqrtm._methods.fractional_power`). Accuracy (float32,
            n = 16 and 64, three spectra, ``t = +-1/3, +-1/6, +-1/4``): forward and
            gradient within 1.4 times of ``"highest"``'s error up to condition number
            ``1e4``, the same at ``1e6``; 85 to 95% of the forward+backward products
            bfloat16 at condition number ``1e2``, 49 to 88% at ``1e4``
            (:attr:`PowerInfo.products`, :func:`power_matmul_count`).
        return_info: also return a :class:`PowerInfo` (residual, iterations, converged,
            scale, products per precision; ``power_cost(p) + 3`` products more).

    Returns:
        ``X`` of the shape and dtype of ``a`` (bfloat16/float16 computed in float32 and
        cast back), and with ``return_info=True`` a :class:`PowerInfo`.

    Raises:
        TypeError: an integer or boolean ``a``; a non-number ``t``; a non-integer count.
        ValueError: fewer than 2 dimensions, non-square matrices, ``t`` not ``+-1/p``, an
            unknown method or precision, a knob that the method does not use, a ridge
            outside ``[0, 1)``, ``precision="mixed"`` with ``"eigh"`` or with float64 or
            complex input.

    Accuracy (float32, relative Frobenius error against float64 ``eigh``; README): at
    condition number ``1e2`` every exponent reaches about ``1e-6``; at ``1e6`` ``"auto"``
    is at or below float32 ``eigh``'s error on the same input for the tested spectra,
    ``A^(-1/p)`` being limited by the conditioning, about ``eps kappa / p``.

    Derivative: ``jax.custom_jvp`` rules, linear in the tangent (JAX transposes them for
    reverse mode), finite at repeated eigenvalues: the square roots' Lyapunov rules
    chained, the coupled iteration's derivative by its replayed schedule, and for
    ``"eigh"`` the Daleckii–Krein formula of ``l^t``. Every transform works: ``jit``,
    ``vmap``, ``grad``, ``jvp``, their compositions.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxsqrtm
        >>> a = jnp.diag(jnp.array([8.0, 27.0, 0.0]))
        >>> print(jnp.round(jaxsqrtm.fractional_matrix_power(a, 1 / 3), 4))
        [[2. 0. 0.]
         [0. 3. 0.]
         [0. 0. 0.]]
        >>> x, info = jaxsqrtm.fractional_matrix_power(a, -1 / 3, return_info=True)
        >>> print(jnp.round(jnp.diag(x), 4), bool(info.converged), bool(info.residual < 1e-5))
        [0.5    0.3333 0.    ] True True
        >>> grad = jax.grad(lambda a: jnp.trace(jaxsqrtm.fractional_matrix_power(a, 1 / 3)))
        >>> print(jnp.round(jnp.diag(grad(jnp.diag(jnp.array([8.0, 27.0])))), 4))
        [0.0833 0.037 ]
    """
    func = "fractional_matrix_power"
    a = _validation.check_matrices(func, a)
    config = configure(func, method, t, precision=precision, max_iters=max_iters)
    if config.precision == _validation.MIXED:
        _validation.check_mixed_dtype(func, a.dtype)
    if ridge is not None:
        ridge = _validation.check_fraction(func, "ridge", ridge)
    return_info = _validation.check_bool(func, "return_info", return_info)
    return _power(a, config, ridge, return_info)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _power(a, config: Config, ridge: float | None, return_info: bool):
    dtype = _validation.compute_dtype(a.dtype)
    x = symmetrize(a.astype(dtype))
    scale = None
    if ridge or return_info:
        scale = spectral_bound(x, precision=_full_precision(config))
    if ridge:
        x = x + (ridge * scale)[..., None, None].astype(dtype) * eye_like(x)
    result = POWER_TABLE[config.method].root(x, config)
    out = result.out.astype(a.dtype)
    if not return_info:
        return out
    converged = jnp.all(jnp.isfinite(result.out), axis=(-2, -1))
    residual = _residual(result.out, x, scale, config)
    zeros = jnp.zeros_like(result.iterations)
    return out, PowerInfo(
        residual,
        result.iterations,
        converged,
        scale,
        {"forward": {}, "backward": {}} if result.products is None else result.products,
        zeros if result.low_precision_iterations is None else result.low_precision_iterations,
        zeros if result.refinements is None else result.refinements,
    )


def _full_precision(config: Config):
    """The products outside the iterations: the mixed policy's float32, else the
    config's precision."""
    return _sign.MIXED.high if config.precision == _validation.MIXED else config.precision


def _residual(out, a, scale, config: Config):
    """:attr:`PowerInfo.residual`, on ``A / c`` and ``X c^(-t)``."""
    precision = _full_precision(config)
    p = config.p
    c = jnp.where(scale > 0, scale, 1)[..., None, None]
    a_hat = a / c
    x_hat = out * c ** (1 / p if config.inverse else -1 / p)
    y = matrix_power(x_hat, p, precision)
    norm = frobenius_norm(y)
    if config.inverse:
        error = mm(y, mm(a_hat, y, precision), precision) - y
        denominator = norm
    else:
        error = mm(y, y - a_hat, precision)
        denominator = norm * norm
    return jnp.where(norm > 0, frobenius_norm(error) / jnp.where(norm > 0, denominator, 1), 0)


def power_matmul_count(
    t,
    *,
    method: str = "auto",
    backward: bool = False,
    precision="highest",
    by_precision: bool = False,
    info: PowerInfo | None = None,
):
    """Number of ``n x n`` matrix products one ``fractional_matrix_power`` call performs per
    matrix, as the method's table entry states it (as :func:`jaxsqrtm.matmul_count`).

    ``None`` for both methods: ``"eigh"`` is not built from products, and ``"auto"``'s count
    depends on the data through its iteration counts. For ``"auto"``, ``A^t`` with ``p = 2^j
    q`` runs ``j`` square roots (``q = 1``; one for ``p = 1``), or ``j + 1`` (``j`` for ``t
    < 0`` and even ``p``) and a coupled iteration (``q >= 3``). A square root of ``k`` steps
    costs ``3k - 1`` products forward (``3k + 1`` for the inverse root) and about ``4k``
    more backward (:func:`jaxsqrtm.matmul_count`); the coupled iteration of ``k`` steps ``(k
    - 1) coupled_step_cost(q) + power_cost(q + 1) + power_cost(q - 1) + 4`` forward (``4k +
    3`` for ``q = 3``) and ``3 coupled_step_cost(q)`` a step backward (12 for ``q = 3``: the
    replayed schedule and its forward-mode tangent) plus ``2 power_cost(q + 1)`` (the
    ridge's removal); then 1 product (``X^2`` for odd ``p``, ``B X`` for ``t = 1/3`` or
    ``1/6``, ``A^(+-1/2)`` squared for ``p = 1``; 2 more backward), none for ``t = -1/6``.
    ``return_info`` adds ``power_cost(p) + 3``. :attr:`PowerInfo.iterations` is the sum of
    the steps.

    With ``by_precision=True`` it returns the products per precision kind instead, as
    :func:`jaxsqrtm.matmul_count` does: for ``"auto"`` and ``"eigh"``, whose counts are
    not static, from the ``info`` (:class:`PowerInfo`) of a call made with the same
    ``t``, ``method`` and ``precision``, as ``(...,)`` int32 arrays, one count per
    matrix (:attr:`PowerInfo.products`; ``{}`` for ``"eigh"``). ``precision="mixed"``
    applies to ``"auto"`` only.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxsqrtm
        >>> a = jnp.diag(jnp.linspace(0.1, 1.0, 8, dtype=jnp.float32))
        >>> _, info = jaxsqrtm.fractional_matrix_power(
        ...     a, -1 / 3, precision="mixed", return_info=True
        ... )
        >>> count = jaxsqrtm.power_matmul_count(
        ...     -1 / 3, precision="mixed", backward=True, by_precision=True, info=info
        ... )
        >>> bool(count["bfloat16"] > count["float32"])
        True
    """
    func = "power_matmul_count"
    config = configure(func, method, t, precision=precision)
    backward = _validation.check_bool(func, "backward", backward)
    count = POWER_TABLE[config.method].cost(config, backward)
    if not _validation.check_bool(func, "by_precision", by_precision):
        return count
    if count is not None:
        return {product_kind(_full_precision(config)): count}
    if info is None or info.products is None:
        raise ValueError(
            f"{func}: method={config.method!r} counts depend on the input; pass "
            "info=PowerInfo from a call with return_info=True"
        )
    return summed_products(info.products, backward=backward)
