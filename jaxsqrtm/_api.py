"""Public ``sqrtm`` / ``inv_sqrtm``: validation, dispatch and the custom gradients.

Three layers, as in ``jax/_src/numpy/linalg.py``: the public wrappers check shapes,
dtypes and knobs at trace time and build a hashable :class:`_Config`; the jitted
:func:`_root` dispatches on it; :func:`_lyapunov_root` and :func:`_eigh_root` carry the
``jax.custom_vjp`` rules.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm import _lyapunov, _methods, _validation
from jaxsqrtm._matrix import matrix_scale, mm, symmetrize

METHODS = ("mpa", "mtp", "ns", "eigh")

_DEFAULTS = {
    "mpa": {"degree": 5, "normalization": "frobenius", "backward_iters": 8},
    "mtp": {"degree": 10, "normalization": "frobenius", "backward_iters": 8},
    "ns": {"num_iters": 5, "normalization": "trace"},
    "eigh": {},
}


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static knobs of one call; hashable, so equal knobs share one compiled program."""

    method: str
    inverse: bool
    precision: lax.Precision
    degree: int | None = None
    num_iters: int | None = None
    normalization: str | None = None
    backward_iters: int | None = None


def _make_config(func, inverse, method, precision, **knobs) -> _Config:
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
            value = _validation.check_choice(value, name, _validation.NORMALIZATIONS)
        else:
            value = _validation.check_count(
                value, name, minimum=0 if name == "backward_iters" else 1
            )
        resolved[name] = value
    return _Config(
        method=method,
        inverse=inverse,
        precision=_validation.check_precision(precision),
        **resolved,
    )


def sqrtm(
    a,
    *,
    method: str = "mpa",
    degree: int | None = None,
    num_iters: int | None = None,
    normalization: str | None = None,
    backward_iters: int | None = None,
    precision="highest",
):
    """Square root ``A^(1/2)`` of symmetric positive (semi-)definite matrices.

    Every matrix is scaled on its own, ``A_hat = A / c``, its root approximated, and the
    result rescaled by ``sqrt(c)``. Methods:

    * ``"mpa"``: matrix Padé approximant ``Q(A_hat)^(-1) P(A_hat)`` of degree
      ``[m/m]`` (``degree``, default 5): 4 products and one batched solve.
    * ``"mtp"``: matrix Taylor polynomial of ``sqrt(1 - Z)``, ``Z = I - A_hat``, to
      degree ``K`` (``degree``, default 10): 5 products (Paterson–Stockmeyer).
    * ``"ns"``: coupled Newton–Schulz (iSQRT-COV), ``num_iters`` (default 5)
      iterations, trace normalisation: ``3 num_iters - 3`` products; gradient by autodiff
      through the iterations.
    * ``"eigh"``: ``V diag(sqrt(max(l, 0))) V^T`` with the Daleckii–Krein gradient, finite
      at repeated eigenvalues.

    ``"mpa"`` and ``"mtp"`` differentiate by solving the Lyapunov equation
    ``S X + X S = G`` (``S`` the computed root, ``G`` the cotangent) with
    ``backward_iters`` (default 8) Newton–Schulz sign iterations started at
    ``S / sqrt(c)``: 5 products each. The gradient is that of the exact square root at
    the computed ``S``, not the derivative of the truncated forward; only ``S`` and
    ``c`` are kept for the backward.

    Args:
        a: ``(..., n, n)`` real matrices, any number of batch axes. Only the symmetric
            part ``(A + A^T) / 2`` is used, and the gradient is symmetric.
        method: ``"mpa"``, ``"mtp"``, ``"ns"`` or ``"eigh"``.
        degree: Padé degree ``m`` or Taylor degree ``K`` (``"mpa"``/``"mtp"`` only).
        num_iters: Newton–Schulz iterations (``"ns"`` only).
        normalization: per-matrix scale ``c``: ``"frobenius"`` (``||A||_F``, the default
            of ``"mpa"``/``"mtp"``), ``"spectral"`` (power-iteration estimate of the
            largest eigenvalue) or ``"trace"`` (the default of ``"ns"``).
        backward_iters: sign iterations of the Lyapunov backward (``"mpa"``/``"mtp"``).
        precision: matmul precision inside the iterations, ``"highest"`` by default
            (JAX's default float32 matmul is TF32 on recent GPUs and bfloat16 on TPUs).

    Returns:
        An array of the shape and dtype of ``a``; bfloat16/float16 inputs are computed in
        float32 and cast back.

    Raises:
        TypeError: integer, boolean or complex ``a``; a non-integer count.
        ValueError: fewer than 2 dimensions, non-square matrices, an unknown method,
            normalization or precision, a knob that the method does not use.

    Accuracy (paper settings; see the README's table): ``"mpa"``'s relative error is
    about ``1e-2`` at condition number 10 and grows to ``O(1)`` beyond ``1e4``, because
    the Frobenius scaling leaves small eigenvalues far from 1; the backward with 8
    iterations is accurate only for condition numbers up to about 10. Raise ``degree``,
    ``backward_iters`` or use ``normalization="spectral"`` for more accuracy.

    Values cannot be checked under ``jit``: NaN or Inf entries give NaN; a zero matrix
    gives a zero root and a zero gradient; negative eigenvalues give a real matrix that
    is not a square root (``"eigh"`` clamps them to 0).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxsqrtm
        >>> a = jnp.array([[4.0, 0.0], [0.0, 9.0]])
        >>> print(jnp.round(jaxsqrtm.sqrtm(a, method="eigh"), 4))
        [[2. 0.]
         [0. 3.]]
        >>> grad = jax.grad(lambda a: jnp.trace(jaxsqrtm.sqrtm(a, method="eigh")))(a)
        >>> print(jnp.round(grad, 4))
        [[0.25   0.    ]
         [0.     0.1667]]
    """
    a = _validation.check_matrices(a, "sqrtm")
    config = _make_config(
        "sqrtm",
        False,
        method,
        precision,
        degree=degree,
        num_iters=num_iters,
        normalization=normalization,
        backward_iters=backward_iters,
    )
    return _root(a, config)


def inv_sqrtm(
    a,
    *,
    method: str = "mpa",
    degree: int | None = None,
    num_iters: int | None = None,
    normalization: str | None = None,
    backward_iters: int | None = None,
    precision="highest",
):
    """Inverse square root ``A^(-1/2)`` of symmetric positive definite matrices.

    Same methods and knobs as :func:`sqrtm`: ``"mpa"`` swaps the Padé polynomials
    (``P(A_hat)^(-1) Q(A_hat)``, exactly the ``[m/m]`` Padé approximant of
    ``(1 - z)^(-1/2)``); ``"mtp"`` uses the series ``(1 - z)^(-1/2) = sum d_k z^k``;
    ``"ns"`` returns the coupled iteration's ``Z``; ``"eigh"`` uses ``l^(-1/2)``.

    The Lyapunov backward of ``"mpa"``/``"mtp"`` solves ``P X + X P = -P^2 G P^2`` with
    ``P`` the computed inverse root (``P^2 = A^(-1)`` without a new inverse), started at
    ``P / c_P`` with ``c_P`` the chosen normalisation of ``P`` itself.

    Args and Raises: as :func:`sqrtm`.

    Accuracy: the relative condition number of ``A^(-1/2)`` is ``kappa / 2``, so float32
    cannot do much better than ``kappa * 1e-7``. A singular or zero matrix gives
    non-finite values; add a ridge (``A + eps I``) for rank-deficient covariances.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxsqrtm
        >>> a = jnp.array([[4.0, 0.0], [0.0, 16.0]])
        >>> print(jnp.round(jaxsqrtm.inv_sqrtm(a, method="eigh"), 4))
        [[0.5  0.  ]
         [0.   0.25]]
    """
    a = _validation.check_matrices(a, "inv_sqrtm")
    config = _make_config(
        "inv_sqrtm",
        True,
        method,
        precision,
        degree=degree,
        num_iters=num_iters,
        normalization=normalization,
        backward_iters=backward_iters,
    )
    return _root(a, config)


@functools.partial(jax.jit, static_argnums=(1,))
def _root(a, config: _Config):
    dtype = _validation.compute_dtype(a.dtype)
    x = symmetrize(a.astype(dtype))
    if config.method == "eigh":
        out = _eigh_root(x, config)
    elif config.method == "ns":
        out = _newton_schulz_root(x, config)
    else:
        out = _lyapunov_root(x, config)
    return out.astype(a.dtype)


def _rescale(root_hat, c, inverse):
    """``c^(+-1/2) * root_hat`` per matrix; a zero scale (zero matrix) gives a zero root."""
    nonzero = (c != 0)[..., None, None]
    safe = jnp.where(nonzero, c[..., None, None], 1)
    factor = lax.rsqrt(safe) if inverse else jnp.sqrt(safe)
    if inverse:
        return jnp.where(nonzero, factor * root_hat, jnp.inf)
    return jnp.where(nonzero, factor * root_hat, 0)


def _normalized(a, config):
    c = matrix_scale(a, config.normalization, precision=config.precision)
    safe = jnp.where(c != 0, c, 1)[..., None, None]
    return a / safe, c


def _newton_schulz_root(a, config):
    a_hat, c = _normalized(a, config)
    root = _methods.newton_schulz_root(
        a_hat, num_iters=config.num_iters, inverse=config.inverse, precision=config.precision
    )
    return _rescale(root, c, config.inverse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _lyapunov_root(a, config: _Config):
    return _lyapunov_root_fwd(a, config)[0]


def _lyapunov_root_fwd(a, config):
    a_hat, c = _normalized(a, config)
    approximant = _methods.pade_root if config.method == "mpa" else _methods.taylor_root
    root = approximant(
        a_hat, degree=config.degree, inverse=config.inverse, precision=config.precision
    )
    out = _rescale(root, c, config.inverse)
    return out, (out, c)


def _lyapunov_root_bwd(config, residuals, g):
    """Gradient of the exact root at the computed one (Song et al., TPAMI 2022, §4).

    Square root, ``S = A^(1/2)``: ``dS = L_S^(-1)(dA)`` with ``L_S(X) = S X + X S``
    self-adjoint, so ``dl/dA = L_S^(-1)(G)``, started at ``S / sqrt(c)``.
    Inverse root, ``P = A^(-1/2)``: ``dP = -P dS P``, so
    ``dl/dA = L_S^(-1)(-P G P) = L_P^(-1)(-P^2 G P^2)``; in terms of ``P_hat = P / c_P``,
    ``dl/dA = c_P^3 L_{P_hat}^(-1)(-P_hat^2 G P_hat^2)``, which keeps every intermediate
    in range whatever the scale of ``A``.
    """
    out, c = residuals
    g = symmetrize(g)
    solve = functools.partial(
        _lyapunov.solve_scaled,
        num_iters=config.backward_iters,
        symmetric_rhs=True,
        precision=config.precision,
    )
    if not config.inverse:
        return (solve(out, g, jnp.sqrt(jnp.maximum(c, 0))),)
    c_p = matrix_scale(out, config.normalization, precision=config.precision)
    nonzero = (c_p != 0)[..., None, None]
    c_p = jnp.where(nonzero, c_p[..., None, None], 1)
    p_hat = out / c_p
    p2 = mm(p_hat, p_hat, config.precision)
    rhs = -mm(mm(p2, g, config.precision), p2, config.precision)
    return (c_p**3 * solve(p_hat, rhs, jnp.ones_like(c)),)


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
    return out, (w, v)


def _eigh_root_bwd(config, residuals, g):
    """Daleckii–Krein: ``dl/dA = V [(V^T G_sym V) o F] V^T``.

    ``F_ij = (f(l_i) - f(l_j)) / (l_i - l_j)``, ``F_ii = f'(l_i)``, written without the
    cancelling difference: ``1 / (s_i + s_j)`` for the root (``s = sqrt(l)``) and
    ``-1 / (s_i s_j (s_i + s_j))`` for the inverse root. Finite at repeated eigenvalues;
    a pair of zero eigenvalues contributes 0 (the root is not differentiable there).
    """
    w, v = residuals
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
    method: str = "mpa",
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
    forward. Returns ``None`` for ``"eigh"``, which is not built from products.
    """
    config = _make_config(
        "matmul_count",
        inverse,
        method,
        "highest",
        degree=degree,
        num_iters=num_iters,
        normalization=normalization,
        backward_iters=backward_iters,
    )
    if config.method == "eigh":
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
