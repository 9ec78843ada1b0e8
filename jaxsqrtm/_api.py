"""Public ``sqrtm`` / ``inv_sqrtm``: validation, dispatch and the custom gradients.

Three layers, as in ``jax/_src/numpy/linalg.py``: the public wrappers check shapes,
dtypes and knobs at trace time and build a hashable :class:`_Config`; the jitted
:func:`_root` dispatches on it; :func:`_lyapunov_root` and :func:`_eigh_root` carry the
``jax.custom_vjp`` rules.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm import _lyapunov, _methods, _sign, _validation
from jaxsqrtm._matrix import frobenius_norm, matrix_scale, mm, spectral_bound, symmetrize

METHODS = ("auto", "mpa", "mtp", "ns", "eigh")

_DEFAULTS = {
    "auto": {"normalization": "spectral_bound", "max_iters": _sign.MAX_ITERS, "ridge": None},
    "mpa": {"degree": 5, "normalization": "frobenius", "backward_iters": 8},
    "mtp": {"degree": 10, "normalization": "frobenius", "backward_iters": 8},
    "ns": {"num_iters": 5, "normalization": "trace"},
    "eigh": {},
}
# Scales that never undershoot the largest eigenvalue, as the adaptive schedule needs.
_BOUNDS = ("spectral_bound", "frobenius", "trace")


class RootInfo(NamedTuple):
    """Diagnostics returned next to the root by ``return_info=True``; shapes ``(...,)``.

    Attributes:
        residual: ``||X^2 - A||_F / ||A||_F`` for :func:`sqrtm`,
            ``||X A X - I||_F / sqrt(n)`` for :func:`inv_sqrtm`, with ``A`` the symmetric
            part of the input (one or two extra products, only when requested).
        iterations: forward iterations used: adaptive for ``"auto"``, ``num_iters`` for
            ``"ns"``, 0 for the closed forms ``"mpa"``, ``"mtp"`` and ``"eigh"``.
        scale: the per-matrix scale ``c`` of ``A_hat = A / c`` (for ``"auto"`` that of
            ``A + ridge c I``; for ``"eigh"`` the largest absolute eigenvalue).
    """

    residual: jax.Array
    iterations: jax.Array
    scale: jax.Array


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static knobs of one call; hashable, so equal knobs share one compiled program."""

    method: str
    inverse: bool
    precision: lax.Precision
    return_info: bool = False
    degree: int | None = None
    num_iters: int | None = None
    normalization: str | None = None
    backward_iters: int | None = None
    max_iters: int | None = None
    ridge: float | None = None


def _check_ridge(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"ridge must be a Python float, got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"ridge must be in [0, 1), got {value!r}")
    return float(value)


def _make_config(func, inverse, method, precision, return_info, **knobs) -> _Config:
    method = _validation.check_choice(method, "method", METHODS)
    defaults = _DEFAULTS[method]
    resolved = {}
    for name, value in knobs.items():
        if name not in defaults:
            if value is not None:
                raise ValueError(
                    f"{func}: {name}={value!r} does not apply to method={method!r}; "
                    f"its knobs are {tuple(defaults) or 'none'}"
                )
            continue
        value = defaults[name] if value is None else value
        if name == "normalization":
            choices = _BOUNDS if method == "auto" else _validation.NORMALIZATIONS
            value = _validation.check_choice(value, name, choices)
        elif name == "ridge":
            value = None if value is None else _check_ridge(value)
        else:
            value = _validation.check_count(
                value, name, minimum=0 if name == "backward_iters" else 1
            )
        resolved[name] = value
    if not isinstance(return_info, bool):
        raise TypeError(f"{func}: return_info must be a bool, got {return_info!r}")
    return _Config(
        method=method,
        inverse=inverse,
        precision=_validation.check_precision(precision),
        return_info=return_info,
        **resolved,
    )


_KNOBS_DOC = """
    Methods (the per-matrix scale ``c`` maps ``A`` to ``A_hat = A / c`` with spectrum
    in ``(0, ~1]``; the root of ``A_hat`` is computed and rescaled by ``c^(+-1/2)``):

    * ``"auto"`` (the default): the accurate mode. Optimally scaled coupled Newton–Schulz iterations
      run until each matrix has converged (about 6 at condition number ``1e2``, 12 at
      ``1e6`` in float32; 3 products each), scaled by a guaranteed bound of the largest
      eigenvalue, with a ridge ``ridge * c`` (default: the machine epsilon) added so
      rank-deficient input converges; Lyapunov backward that replays the forward's
      step sizes (4 products a step). Matmul-only, float32 round-off accuracy up to
      condition number ``1e6``.
    * ``"mpa"``: matrix Padé approximant ``Q(A_hat)^(-1) P(A_hat)`` of degree
      ``[m/m]`` (``degree``, default 5): 4 products and one batched LU solve.
    * ``"mtp"``: matrix Taylor polynomial in ``Z = I - A_hat`` of degree ``K``
      (``degree``, default 10): 5 products (Paterson–Stockmeyer).
    * ``"ns"``: coupled Newton–Schulz (iSQRT-COV), ``num_iters`` (default 5)
      iterations, trace normalisation: ``3 num_iters - 3`` products; gradient by autodiff
      through the iterations.
    * ``"eigh"``: ``V f(l) V^T`` (negative eigenvalues clamped to 0 for the root) with
      the Daleckii–Krein gradient, finite at repeated eigenvalues.

    ``"mpa"`` and ``"mtp"`` differentiate by solving the Lyapunov equation with
    ``backward_iters`` (default 8) Newton–Schulz sign iterations (``4 k - 2`` products
    for ``k`` iterations, 30 by default). The
    gradient is that of the exact root at the computed one, not the derivative of the
    truncated forward; the backward keeps only the result and one scalar per matrix.

    Args:
        a: ``(..., n, n)`` real matrices, any number of batch axes. Only the symmetric
            part ``(A + A^T) / 2`` is used, and the gradient is symmetric.
        method: ``"auto"`` (default), ``"mpa"``, ``"mtp"``, ``"ns"`` or ``"eigh"``. The
            default is the accurate mode because it reaches float32 round-off where the
            paper's ``"mpa"`` settings are off by 1e-2 to 1, at a forward+backward cost
            the benchmark measures at or below ``"mpa"``'s for condition numbers up to
            ``1e2`` (README, "Which method").
        degree: Padé degree ``m`` or Taylor degree ``K`` (``"mpa"``/``"mtp"`` only). In
            float32 keep ``m <= 8``: ``Q(A_hat)`` becomes ill-conditioned.
        num_iters: Newton–Schulz iterations (``"ns"`` only).
        normalization: per-matrix scale ``c``: ``"frobenius"`` (``||A||_F``; default of
            ``"mpa"``/``"mtp"``), ``"spectral"`` (power-iteration estimate of the
            largest eigenvalue, may undershoot it), ``"spectral_bound"``
            (``min(||A||_F, ||A^2||_F^(1/2))``, one product; default of ``"auto"``,
            which accepts only bounds) or ``"trace"`` (default of ``"ns"``).
        backward_iters: sign iterations of the Lyapunov backward (``"mpa"``/``"mtp"``).
        max_iters: cap on the adaptive iterations of ``"auto"`` (default 40).
        ridge: ``"auto"`` computes the root of ``A + ridge * c * I`` (default: the
            machine epsilon of the compute dtype, ``1.2e-7`` in float32). It bounds the
            condition number by ``1 / ridge`` and so the iteration count; zero
            eigenvalues map to ``sqrt(ridge * c)``.
        precision: matmul precision inside the iterations, ``"highest"`` by default
            (JAX's default float32 matmul is TF32 on recent GPUs and bfloat16 on TPUs).
        return_info: also return a :class:`RootInfo` (residual, iterations, scale).

    Returns:
        An array of the shape and dtype of ``a`` (bfloat16/float16 are computed in
        float32 and cast back), and with ``return_info=True`` a :class:`RootInfo`.

    Raises:
        TypeError: integer, boolean or complex ``a``; a non-integer count.
        ValueError: fewer than 2 dimensions, non-square matrices, an unknown method,
            normalization or precision, a knob that the method does not use.

    Values cannot be checked under ``jit``: NaN or Inf entries give NaN; a zero matrix
    gives a zero root and a zero gradient; negative eigenvalues give a real matrix that
    is not a root (``"eigh"`` clamps them to 0). ``"auto"`` loops with
    ``lax.while_loop``: reverse-over-reverse differentiation (``grad`` of ``grad``) stops
    there, forward-over-reverse (``jax.jvp`` of ``grad``, ``jax.hessian``) works.
"""


def _public_root(func, inverse):
    def root(
        a,
        *,
        method: str = "auto",
        degree: int | None = None,
        num_iters: int | None = None,
        normalization: str | None = None,
        backward_iters: int | None = None,
        max_iters: int | None = None,
        ridge: float | None = None,
        precision="highest",
        return_info: bool = False,
    ):
        a = _validation.check_matrices(a, func)
        config = _make_config(
            func,
            inverse,
            method,
            precision,
            return_info,
            degree=degree,
            num_iters=num_iters,
            normalization=normalization,
            backward_iters=backward_iters,
            max_iters=max_iters,
            ridge=ridge,
        )
        return _root(a, config)

    root.__name__ = root.__qualname__ = func
    return root


sqrtm = _public_root("sqrtm", inverse=False)
sqrtm.__doc__ = (
    """Square root ``A^(1/2)`` of symmetric positive (semi-)definite matrices.
"""
    + _KNOBS_DOC
    + """
    Accuracy (float32, see the README's tables): ``"auto"`` reaches 1e-5 up to condition
    number ``1e2`` and 1e-3 up to ``1e6``; the paper's ``"mpa"`` settings give about
    ``1e-2`` at condition number 10 and ``O(1)`` beyond ``1e4``, and their 8-iteration
    backward is accurate only up to about 10.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxsqrtm
        >>> a = jnp.array([[4.0, 0.0], [0.0, 9.0]])
        >>> print(jnp.round(jaxsqrtm.sqrtm(a, method="auto"), 4))
        [[2. 0.]
         [0. 3.]]
        >>> grad = jax.grad(lambda a: jnp.trace(jaxsqrtm.sqrtm(a, method="auto")))(a)
        >>> bool(jnp.allclose(grad, jnp.diag(jnp.array([1 / 4, 1 / 6])), atol=1e-6))
        True
"""
)

inv_sqrtm = _public_root("inv_sqrtm", inverse=True)
inv_sqrtm.__doc__ = (
    """Inverse square root ``A^(-1/2)`` of symmetric positive definite matrices.

    Same methods and knobs as :func:`sqrtm`: ``"auto"`` returns the coupled iteration's
    ``Z``; ``"mpa"`` swaps the Padé polynomials (``P(A_hat)^(-1) Q(A_hat)``, exactly the
    ``[m/m]`` Padé approximant of ``(1 - z)^(-1/2)``); ``"mtp"`` uses the series
    ``(1 - z)^(-1/2) = sum d_k z^k``; ``"eigh"`` uses ``l^(-1/2)``. The Lyapunov backward
    solves ``P X + X P = -P^2 G P^2`` with ``P`` the computed inverse root (``P^2 = A^-1``
    without a new inverse).
"""
    + _KNOBS_DOC
    + """
    Accuracy: the relative condition number of ``A^(-1/2)`` is ``kappa / 2``, so float32
    cannot do much better than ``kappa * 1e-7``. A singular or zero matrix gives
    non-finite values except with ``"auto"``, whose ridge makes it finite.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxsqrtm
        >>> a = jnp.array([[4.0, 0.0], [0.0, 16.0]])
        >>> print(jnp.round(jaxsqrtm.inv_sqrtm(a, method="auto"), 4))
        [[0.5  0.  ]
         [0.   0.25]]
"""
)


@functools.partial(jax.jit, static_argnums=(1,))
def _root(a, config: _Config):
    dtype = _validation.compute_dtype(a.dtype)
    x = symmetrize(a.astype(dtype))
    if config.method == "eigh":
        out, scale, iterations = _eigh_root(x, config)
    elif config.method == "ns":
        out, scale, iterations = _newton_schulz_root(x, config)
    else:
        out, scale, iterations = _lyapunov_root(x, config)
    if not config.return_info:
        return out.astype(a.dtype)
    info = RootInfo(_residual(out, x, config), iterations, scale)
    return out.astype(a.dtype), info


def _residual(out, a, config):
    """``||X^2 - A||_F / ||A||_F`` or ``||X A X - I||_F / sqrt(n)`` per matrix."""
    if config.inverse:
        error = mm(mm(out, a, config.precision), out, config.precision) - jnp.eye(
            a.shape[-1], dtype=a.dtype
        )
        return frobenius_norm(error) / jnp.sqrt(jnp.asarray(a.shape[-1], a.dtype))
    return frobenius_norm(mm(out, out, config.precision) - a) / frobenius_norm(a)


def _rescale(root_hat, c, inverse):
    """``c^(+-1/2) * root_hat`` per matrix; a zero scale (zero matrix) gives a zero root."""
    nonzero = (c != 0)[..., None, None]
    safe = jnp.where(nonzero, c[..., None, None], 1)
    factor = lax.rsqrt(safe) if inverse else jnp.sqrt(safe)
    if inverse:
        return jnp.where(nonzero, factor * root_hat, jnp.inf)
    return jnp.where(nonzero, factor * root_hat, 0)


def _normalized(a, config):
    """``(A_hat, c)`` with ``A_hat = A / c``."""
    c = matrix_scale(a, config.normalization, precision=config.precision)
    safe = jnp.where(c != 0, c, 1)[..., None, None]
    return a / safe, c


class _Schedule(NamedTuple):
    """What the accurate backward keeps from the forward, besides the scale ``c``."""

    root: jax.Array  # A_hat^(1/2) of the normalised input, ridge removed
    inverse_root: jax.Array | None  # A_hat^(-1/2) likewise, for inv_sqrtm only
    alphas: jax.Array  # (..., max_iters) step sizes of the forward sign iteration
    iterations: jax.Array  # (...,) steps taken


def _ridged_root(a_hat, c, config):
    """Roots of ``A_hat`` from those of ``A_hat + r I``, the ridge removed by a series.

    The coupled iteration delivers both ``Y = (A_hat + r I)^(1/2)`` and
    ``Z = (A_hat + r I)^(-1/2)``; with ``u = r Z^2``::

        A_hat^(1/2)  = Y (I - u)^(1/2)  = Y - r Z / 2 - r^2 Z^3 / 8 + O(u^3)
        A_hat^(-1/2) = Z (I - u)^(-1/2) = Z + r Z^3 / 2 + 3 r^2 Z^5 / 8 + O(u^3)

    The relative error left at an eigenvalue ``l`` is about ``(r / l)^3 / 16`` for the
    root and ``5 (r / l)^3 / 16`` for the inverse, instead of ``r / (2 l)`` for a plain
    ridge. At condition number ``1e6`` in float32 ``r / l ~ 0.1``: the root's
    second-order term (``(r / l)^2 / 8 ~ 2e-3`` there) matters for the gradient, whose
    error is largest in those directions. Per matrix, the second-order term is dropped
    where :func:`_second_order_matters` shows it is below round-off in every direction.

    Cost: the root takes 2 products (``Z^3``) and the inverse root 3 (``Z^3``, ``Z^5``)
    when some matrix of the batch needs its second-order term; otherwise the root takes
    none and the inverse root 2 (and keeps the root's ``r^2`` term, free there).
    Returns ``(root_hat, c', schedule)`` with the root to be rescaled by ``c'`` and what
    the backward needs.
    """
    ridge = _sign.floor_for(a_hat.dtype) ** 2 if config.ridge is None else config.ridge
    eye = jnp.eye(a_hat.shape[-1], dtype=a_hat.dtype)
    r = ridge / (1 + ridge)
    y, z, iterations, alphas = _methods.scaled_newton_schulz_roots(
        (a_hat + ridge * eye) / (1 + ridge), max_iters=config.max_iters, precision=config.precision
    )
    keep = _second_order_matters(z, r)[..., None, None]
    precision = config.precision
    if config.inverse:  # Z^3 is needed either way
        z2 = mm(z, z, precision)
        z3 = mm(z2, z, precision)

    def removed(second_order: bool):
        """The roots with the ridge removed, with or without the ``r^2`` terms (static).

        Each branch yields the finished sums: the skipped term costs no pass over zeros.
        """

        def branch():
            if not config.inverse:
                root = y - 0.5 * r * z
                if second_order:
                    cube = mm(mm(z, z, precision), z, precision)
                    root = root - jnp.where(keep, 0.125 * r * r * cube, 0)
                return root, root
            inverse_root = z + 0.5 * r * z3
            if second_order:
                inverse_root = inverse_root + jnp.where(
                    keep, 0.375 * r * r * mm(z3, z2, precision), 0
                )
            return y - 0.5 * r * z - 0.125 * r * r * z3, inverse_root

        return branch

    root, inverse_root = lax.cond(jnp.any(keep), removed(True), removed(False))
    root = symmetrize(root)
    inverse_root = symmetrize(inverse_root) if config.inverse else None
    schedule = _Schedule(root, inverse_root, alphas, iterations)
    return inverse_root if config.inverse else root, c * (1 + ridge), schedule


def _second_order_matters(z, r):
    """Whether the ``r^2`` terms of :func:`_ridged_root` can exceed round-off, per matrix.

    ``u = r min(||Z||_F^2, ||Z||_inf^2)`` bounds the series variable ``r ||Z||_2^2`` in
    every direction (``||Z||_2 <= ||Z||_inf`` for symmetric ``Z``; measured 2 to 30
    times too large for n = 8 to 512), and the second-order terms are at most
    ``3 u^2 / 8`` relative, so they are kept where ``u > sqrt(eps) / 2``. In float32 that
    keeps them from condition number ``1e3`` to ``1e4`` on, and drops them at ``1e2``
    up to n = 64 to 512, depending on the spectrum.
    """
    eps = float(jnp.finfo(z.dtype).eps)
    frobenius2 = jnp.sum(z * z, axis=(-2, -1))
    row_sum = jnp.max(jnp.sum(jnp.abs(z), axis=-1), axis=-1)
    u = r * jnp.minimum(frobenius2, row_sum * row_sum)
    return u > 0.5 * eps**0.5


def _newton_schulz_root(a, config):
    a_hat, c = _normalized(a, config)
    root = _methods.newton_schulz_root(
        a_hat, num_iters=config.num_iters, inverse=config.inverse, precision=config.precision
    )
    iterations = jnp.full(c.shape, config.num_iters, jnp.int32)
    return _rescale(root, c, config.inverse), c, iterations


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _lyapunov_root(a, config: _Config):
    return _lyapunov_root_fwd(a, config)[0]


def _lyapunov_root_fwd(a, config):
    a_hat, c = _normalized(a, config)
    kwargs = {"inverse": config.inverse, "precision": config.precision}
    if config.method == "auto":
        root, c, schedule = _ridged_root(a_hat, c, config)
        out = _rescale(root, c, config.inverse)
        return (out, c, schedule.iterations), (c, schedule)
    approximant = _methods.pade_root if config.method == "mpa" else _methods.taylor_root
    root = approximant(a_hat, degree=config.degree, **kwargs)
    out = _rescale(root, c, config.inverse)
    return (out, c, jnp.zeros(c.shape, jnp.int32)), (out, c)


def _lyapunov_root_bwd(config, residuals, cotangents):
    """Gradient of the exact root at the computed one (Song et al., TPAMI 2022, §4).

    Square root, ``S = A^(1/2)``: ``dS = L_S^(-1)(dA)`` with ``L_S(X) = S X + X S``
    self-adjoint, so ``dl/dA = L_S^(-1)(G)``, started at ``S / sqrt(c)``.
    Inverse root, ``P = A^(-1/2)``: ``dP = -P dS P``, so
    ``dl/dA = L_S^(-1)(-P G P) = L_P^(-1)(-P^2 G P^2)``; in terms of ``P_hat = P / c_P``,
    ``dl/dA = c_P^3 L_{P_hat}^(-1)(-P_hat^2 G P_hat^2)``, which keeps every intermediate
    in range whatever the scale of ``A``. ``c_P`` is the chosen normalisation of ``P``
    (``"spectral_bound"`` reuses ``P^2``). ``"auto"``: :func:`_accurate_root_bwd`.
    """
    # The scale and iteration outputs carry no gradient; the solver reads G as symmetric.
    g = cotangents[0]
    if config.method == "auto":
        return (_accurate_root_bwd(config, *residuals, g),)
    out, c = residuals
    solve = functools.partial(
        _lyapunov.solve_scaled,
        num_iters=config.backward_iters,
        symmetric_rhs=True,
        precision=config.precision,
    )
    if not config.inverse:
        return (solve(out, g, jnp.sqrt(jnp.maximum(c, 0))),)
    p2 = mm(out, out, config.precision)
    if config.normalization == "spectral_bound":
        c_p = spectral_bound(out, square=p2)
    else:
        c_p = matrix_scale(out, config.normalization, precision=config.precision)
    c_p = jnp.where(c_p != 0, c_p, 1)[..., None, None]
    p_hat2 = p2 / (c_p * c_p)
    rhs = -mm(mm(p_hat2, g, config.precision), p_hat2, config.precision)
    return (c_p**3 * solve(out / c_p, rhs, jnp.ones_like(c)),)


def _accurate_root_bwd(config, c, schedule, g):
    """The backward of ``"auto"``: both roots through ``L_S^(-1)``, ``S = A^(1/2)``.

    With ``S = sqrt(c) S_hat`` and ``P = P_hat / sqrt(c)``::

        sqrtm:      dl/dA = L_S^(-1)(G)        = L_{S_hat}^(-1)(G) / sqrt(c)
        inv_sqrtm:  dl/dA = L_S^(-1)(-P G P)   = L_{S_hat}^(-1)(-P_hat G P_hat) / c^(3/2)

    ``S_hat`` has the spectrum that the forward iteration took to 1, so the solve replays
    the forward's step sizes and step count (:func:`_lyapunov.replayed_sign_lyapunov`)
    instead of measuring its own: ``4k - 2`` products for ``k`` steps, plus 2 for the
    inverse's right-hand side.
    """
    nonzero = c != 0
    safe = jnp.where(nonzero, c, 1)
    rhs, factor = g, lax.rsqrt(safe)
    if config.inverse:
        p = schedule.inverse_root
        rhs, factor = -mm(mm(p, g, config.precision), p, config.precision), factor**3
    x = _lyapunov.replayed_sign_lyapunov(
        schedule.root, rhs, schedule.alphas, schedule.iterations, precision=config.precision
    )
    return jnp.where(nonzero[..., None, None], factor[..., None, None] * x, 0)


_lyapunov_root.defvjp(_lyapunov_root_fwd, _lyapunov_root_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _eigh_root(a, config: _Config):
    return _eigh_root_fwd(a, config)[0]


def _eigh_values(w, inverse):
    return lax.rsqrt(w) if inverse else jnp.sqrt(jnp.maximum(w, 0))


def _eigh_root_fwd(a, config):
    w, v = jnp.linalg.eigh(a)
    f = _eigh_values(w, config.inverse)
    out = mm(v * f[..., None, :], jnp.swapaxes(v, -1, -2), config.precision)
    scale = jnp.max(jnp.abs(w), axis=-1)
    return (out, scale, jnp.zeros(scale.shape, jnp.int32)), (w, v)


def _eigh_root_bwd(config, residuals, cotangents):
    """Daleckii–Krein: ``dl/dA = V [(V^T G_sym V) o F] V^T``.

    ``F_ij = (f(l_i) - f(l_j)) / (l_i - l_j)``, ``F_ii = f'(l_i)``, written without the
    cancelling difference: ``1 / (s_i + s_j)`` for the root (``s = sqrt(l)``) and
    ``-1 / (s_i s_j (s_i + s_j))`` for the inverse root. Finite at repeated eigenvalues;
    a pair of zero eigenvalues contributes 0 (the root is not differentiable there).
    """
    w, v = residuals
    g = cotangents[0]
    s = jnp.sqrt(jnp.maximum(w, 0))
    pair_sum = s[..., :, None] + s[..., None, :]
    if config.inverse:
        denominator = -pair_sum * s[..., :, None] * s[..., None, :]
    else:
        denominator = pair_sum
    f = jnp.where(denominator != 0, 1 / jnp.where(denominator != 0, denominator, 1), 0)
    vt = jnp.swapaxes(v, -1, -2)
    inner = mm(mm(vt, symmetrize(g), config.precision), v, config.precision)
    return (mm(mm(v, inner * f, config.precision), vt, config.precision),)


_eigh_root.defvjp(_eigh_root_fwd, _eigh_root_bwd)


def matmul_count(
    method: str,
    *,
    inverse: bool = False,
    backward: bool = False,
    degree: int | None = None,
    num_iters: int | None = None,
    normalization: str | None = None,
    backward_iters: int | None = None,
) -> int | None:
    """Number of ``n x n`` matrix products one call performs per matrix.

    Counts the forward pass, plus the backward pass when ``backward`` is true. The batched
    linear solve of ``"mpa"`` is not a product and is not counted. Reverse-mode autodiff
    through a product costs two products, so ``"ns"``'s backward is counted as twice its
    forward. Returns ``None`` for ``"eigh"``, which is not built from products, and for
    ``"auto"``, whose iteration count depends on the input: for ``k`` iterations
    (``RootInfo.iterations``) ``3k - 1`` products forward and ``4k - 2`` more backward;
    the inverse root adds 2 forward and 2 backward. Where the ridge's second-order term
    is kept (in float32 from condition number ``1e3`` to ``1e4`` on, depending on the
    spectrum and ``n``) the forward takes 2 more (1 for the inverse root).
    """
    config = _make_config(
        "matmul_count",
        inverse,
        method,
        "highest",
        False,
        degree=degree,
        num_iters=num_iters,
        normalization=normalization,
        backward_iters=backward_iters,
    )
    if config.method in ("eigh", "auto"):
        return None
    if config.method == "ns":
        forward = _methods.newton_schulz_cost(config.num_iters, inverse)
        return 3 * forward if backward else forward
    if config.method == "mpa":
        forward = _methods.pade_cost(config.degree)
    else:
        forward = _methods.taylor_cost(config.degree)
    if not backward:
        return forward
    extra = 3 if inverse else 0  # P^2, P^2 G and (P^2 G) P^2
    return forward + extra + _lyapunov.lyapunov_cost(config.backward_iters, symmetric_rhs=True)
