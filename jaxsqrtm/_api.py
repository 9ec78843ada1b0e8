"""Public ``sqrtm`` / ``inv_sqrtm`` / ``matmul_count``: validation and dispatch.

Three layers, as in ``jax/_src/numpy/linalg.py``: the public wrappers check shapes,
dtypes and knobs at trace time against the method's entry in
:data:`jaxsqrtm._methods.TABLE` and build a hashable :class:`jaxsqrtm._core.Config`;
the jitted :func:`_root` calls the entry's ``root``, which carries its own
differentiation rule. Nothing here branches on a method's name.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsqrtm import _sign, _validation
from jaxsqrtm._core import Config, summed_products
from jaxsqrtm._matrix import frobenius_norm, mm, product_kind, symmetrize
from jaxsqrtm._methods import TABLE

METHODS = tuple(TABLE)


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
        products: the matrix products of the call per matrix and precision kind,
            ``{"forward": {kind: count}, "backward": {kind: count}}`` (int32 arrays;
            ``"backward"``: what reverse mode adds), kinds ``"bfloat16"``, ``"float32"``
            (``"highest"``), ``"tf32"`` (``"high"``) and ``"default"``; the
            decomposition of ``"eigh"`` is not a product (empty mappings). Summed by
            ``matmul_count(..., by_precision=True, info=info)``.
        low_precision_iterations: iterations with bfloat16 products (``precision="mixed"``;
            0 elsewhere).
        refinements: float32-residual refinement steps (``precision="mixed"``; 0
            elsewhere).

    ``products``, ``low_precision_iterations`` and ``refinements`` come after the first
    three fields, so ``RootInfo(residual, iterations, scale)`` still builds one (they
    default to ``None``), but a ``RootInfo`` unpacks into six names.
    """

    residual: jax.Array
    iterations: jax.Array
    scale: jax.Array
    products: dict | None = None
    low_precision_iterations: jax.Array | None = None
    refinements: jax.Array | None = None


def configure(func: str, method, *, inverse: bool, precision="highest", **knobs) -> Config:
    """Validate ``method`` and its keywords for ``func``; ``None`` knobs take the default."""
    method = _validation.check_choice(func, "method", method, METHODS)
    return TABLE[method].configure(func, inverse=inverse, precision=precision, given=knobs)


_KNOBS_DOC = """
    Methods (the per-matrix scale ``c`` maps ``A`` to ``A_hat = A / c`` with spectrum
    in ``(0, ~1]``; the root of ``A_hat`` is computed and rescaled by ``c^(+-1/2)``):

    * ``"auto"`` (the default): the accurate mode. Optimally scaled coupled Newton–Schulz iterations
      run until each matrix has converged (about 6 at condition number ``1e2``, 12 at
      ``1e6`` in float32; 3 products each), scaled by a guaranteed bound of the largest
      eigenvalue, with a ridge ``ridge * c`` (default: the machine epsilon) added so
      that the step count stays bounded; Lyapunov backward that replays the forward's
      step sizes (4 products a step). Matmul-only and float32 round-off accurate up
      to condition number ``1e6``. A matrix whose spectrum reaches the noise floor
      (smallest eigenvalue ``<= 2 ridge c``: rank-deficient or indefinite input), that
      did not converge in ``max_iters`` or gave a non-finite result is computed by
      ``"eigh"`` instead, only when the batch has one (both branches run under
      ``jax.vmap``).
    * ``"mpa"``: matrix Padé approximant ``Q(A_hat)^(-1) P(A_hat)`` of degree
      ``[m/m]`` (``degree``, default 5): 4 products and one batched LU solve.
    * ``"mtp"``: matrix Taylor polynomial in ``Z = I - A_hat`` of degree ``K``
      (``degree``, default 10): 5 products (Paterson–Stockmeyer).
    * ``"ns"``: coupled Newton–Schulz (iSQRT-COV), ``num_iters`` (default 5)
      iterations, trace normalisation: ``3 num_iters - 3`` products; gradient by autodiff
      through the iterations.
    * ``"eigh"``: ``V f(l) V^H`` with the Daleckii–Krein gradient, finite at repeated
      and zero eigenvalues.

    PSD semantics (``"auto"`` and ``"eigh"``): eigenvalues at or below the noise floor
    ``2 n^(1/4) eps max|l|`` (negative ones included) are treated as 0. The root is
    that of the PSD part ``A_+ = (A + |A|) / 2`` with round-off-sized eigenvalues set
    to 0; the inverse root is its pseudo-inverse, ``l^(-1/2)`` on the range and 0 on
    the null space. ``"mpa"``, ``"mtp"`` and ``"ns"`` do not project: at a negative
    eigenvalue they evaluate their polynomial or rational approximation, finite but not
    a root, and a zero eigenvalue gives their truncation error.

    ``"mpa"`` and ``"mtp"`` differentiate by solving the Lyapunov equation with
    ``backward_iters`` (default 8) Newton–Schulz sign iterations (``4 k - 2`` products
    for ``k`` iterations, 30 by default). The
    gradient is that of the exact root at the computed one, not the derivative of the
    truncated forward; the backward keeps only the result and one scalar per matrix.

    Args:
        a: ``(..., n, n)`` real symmetric or complex Hermitian matrices (float16,
            bfloat16, float32, float64, complex64, complex128), any number of batch
            axes. Only the Hermitian part ``(A + A^H) / 2`` is used, and the gradient
            is Hermitian (for complex input, JAX's convention: the cotangent of a
            real loss is the conjugate of ``dl/dRe A + i dl/dIm A``).
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
        ridge: ``"auto"`` iterates on ``A + ridge * c * I`` and removes the ridge by a
            series (default: the machine epsilon of the compute dtype, ``1.2e-7`` in
            float32). It bounds the condition number seen by the iteration by
            ``1 / ridge`` and so the iteration count. A larger ridge leaves an error of
            about ``(ridge c / l)^3 / 16`` at eigenvalue ``l``; a smaller one (``0``
            included) makes rank-deficient input run ``max_iters`` steps and then take
            the decomposition.
        precision: matmul precision inside the iterations: ``"highest"`` (the default),
            ``"high"`` or ``"default"`` (JAX's default float32 matmul is TF32 on recent
            GPUs and bfloat16 on TPUs), or ``"mixed"`` (``"auto"`` only, real float32,
            bfloat16 or float16 input): bfloat16 products (float32 accumulation) where
            the iteration's measurements allow them, float32 residuals to recover
            float32 accuracy. A bfloat16 product perturbs an iterate by about ``1e-3``
            relative, which no later step of the iteration corrects, so ``"mixed"`` ends
            with Newton steps ``Y <- Y + L_Y^(-1)(A_hat - Y^2)`` (float32 residual,
            bfloat16 Lyapunov solve; 2 at condition number ``1e2``). Matrices of
            condition number up to a few hundred take bfloat16 iteration steps; up to
            about ``1e5``, float32 steps as with ``"highest"`` and bfloat16 Lyapunov
            solves refined in float32 for the derivative; beyond, ``"highest"`` entirely
            (:class:`jaxsqrtm._sign.MixedPrecision`). Accuracy (float32, n = 16 and 64,
            three spectra): within 1.8x of ``"highest"`` up to condition number ``1e4``,
            equal at ``1e6``. Cost: about 3 times as many products, 95% (root) or 91 to
            93% (inverse root) of them bfloat16 at condition number ``1e2``
            (``matmul_count(..., by_precision=True, info=...)``), which an H100's
            throughputs turn into an estimated 3.1x (root) or 2.2x (inverse root)
            speed-up of forward+backward over ``"highest"``; no speed-up on CPUs, whose
            bfloat16 products are not faster. The fixed-step methods reject it: nothing
            in them removes the error a bfloat16 product leaves.
        return_info: also return a :class:`RootInfo` (residual, iterations, scale,
            products per precision).

    Returns:
        An array of the shape and dtype of ``a`` (bfloat16/float16 are computed in
        float32 and cast back), and with ``return_info=True`` a :class:`RootInfo`.

    Raises:
        TypeError: integer or boolean ``a``; a non-integer count.
        ValueError: fewer than 2 dimensions, non-square matrices, an unknown method,
            normalization or precision, a knob that the method does not use,
            ``precision="mixed"`` with a method other than ``"auto"`` or with float64 or
            complex input.

    Values cannot be checked under ``jit``: NaN or Inf entries give NaN; a zero matrix
    gives a zero root and a zero gradient; negative eigenvalues follow the PSD semantics
    above.

    Transforms: every method supports ``jit``, ``vmap``, ``jax.jvp``/``jax.jacfwd``/
    ``jax.linearize``, ``jax.grad``/``jax.vjp``, second order in any combination
    (``jax.hessian``, ``grad`` of ``grad``), ``jax.checkpoint``, ``lax.scan`` bodies and
    ``jax.shard_map``. ``"auto"``, ``"mpa"`` and ``"mtp"`` differentiate by a
    ``jax.custom_jvp`` rule that solves the Lyapunov equation (the loops are never
    differentiated); ``"eigh"`` by the Daleckii–Krein formula; ``"ns"`` by autodiff.
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
        a = _validation.check_matrices(func, a)
        config = configure(
            func,
            method,
            inverse=inverse,
            precision=precision,
            degree=degree,
            num_iters=num_iters,
            normalization=normalization,
            backward_iters=backward_iters,
            max_iters=max_iters,
            ridge=ridge,
        )
        if config.precision == _validation.MIXED:
            _validation.check_mixed_dtype(func, a.dtype)
        return_info = _validation.check_bool(func, "return_info", return_info)
        return _root(a, config, return_info)

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
    cannot do much better than ``kappa * 1e-7``. ``"auto"`` and ``"eigh"`` return the
    pseudo-inverse root of a singular matrix (0 on its null space); ``"mpa"``, ``"mtp"``
    and ``"ns"`` give non-finite or meaningless values there (an infinite inverse root
    for a zero matrix, where ``"auto"`` and ``"eigh"`` give 0).

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxsqrtm
        >>> a = jnp.array([[4.0, 0.0], [0.0, 16.0]])
        >>> print(jnp.round(jaxsqrtm.inv_sqrtm(a, method="auto"), 4))
        [[0.5  0.  ]
         [0.   0.25]]
"""
)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _root(a, config: Config, return_info: bool):
    dtype = _validation.compute_dtype(a.dtype)
    x = symmetrize(a.astype(dtype))
    result = TABLE[config.method].root(x, config)
    out = result.out.astype(a.dtype)
    if not return_info:
        return out
    zeros = jnp.zeros_like(result.iterations)
    return out, RootInfo(
        _residual(result.out, x, config),
        result.iterations,
        result.scale,
        TABLE[config.method].static_products(config, zeros)
        if result.products is None
        else result.products,
        zeros if result.low_precision_iterations is None else result.low_precision_iterations,
        zeros if result.refinements is None else result.refinements,
    )


def _residual(out, a, config):
    """``||X^2 - A||_F / ||A||_F`` or ``||X A X - I||_F / sqrt(n)`` per matrix."""
    precision = _sign.MIXED.high if config.precision == _validation.MIXED else config.precision
    if config.inverse:
        error = mm(mm(out, a, precision), out, precision) - jnp.eye(a.shape[-1], dtype=a.dtype)
        return frobenius_norm(error) / jnp.sqrt(jnp.asarray(a.shape[-1], a.dtype))
    return frobenius_norm(mm(out, out, precision) - a) / frobenius_norm(a)


def matmul_count(
    method: str,
    *,
    inverse: bool = False,
    backward: bool = False,
    degree: int | None = None,
    num_iters: int | None = None,
    normalization: str | None = None,
    backward_iters: int | None = None,
    precision="highest",
    by_precision: bool = False,
    info: RootInfo | None = None,
):
    """Number of ``n x n`` matrix products one call performs per matrix.

    Counts the forward pass, plus the reverse-mode backward pass when ``backward`` is
    true, as the method's table entry states it. The batched linear solve of ``"mpa"``
    is not a product and is not counted. Reverse-mode autodiff through a product costs
    two products, so ``"ns"``'s backward is counted as twice its forward. Returns
    ``None`` for ``"eigh"``, which is not built from products, and for ``"auto"``, whose
    iteration count depends on the input: for ``k`` iterations (``RootInfo.iterations``)
    ``3k - 1`` products forward and ``4k - 2`` more backward; the inverse root adds 2
    forward and 2 backward. Where the ridge's second-order term is kept (in float32 from
    condition number ``1e3`` to ``1e4`` on, depending on the spectrum and ``n``) the
    forward takes 2 more (1 for the inverse root). A forward-mode ``jax.jvp`` costs what
    the backward does.

    With ``by_precision=True`` it returns the products per precision kind instead, a
    mapping such as ``{"bfloat16": 145, "float32": 5}``: kinds ``"bfloat16"`` (bfloat16
    operands, float32 accumulation), ``"float32"`` (``precision="highest"``), ``"tf32"``
    (``"high"``: TF32 on NVIDIA GPUs) and ``"default"``. For ``"auto"``, whose count
    depends on the input, pass the ``info`` (:class:`RootInfo`) of the call, made with
    the same ``precision`` and ``inverse``: the mapping then holds ``(...,)`` int32
    arrays, one count per matrix (:attr:`RootInfo.products`). ``precision="mixed"``
    applies to ``"auto"`` only. The power iterations' matrix-vector products (two a step
    and 8 to 16 a call, ``O(n^2)`` each) are not counted: against ``n x n`` products they
    are negligible.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxsqrtm
        >>> jaxsqrtm.matmul_count("mpa", backward=True, by_precision=True)
        {'float32': 34}
        >>> a = jnp.diag(jnp.linspace(0.1, 1.0, 8, dtype=jnp.float32))
        >>> _, info = jaxsqrtm.sqrtm(a, precision="mixed", return_info=True)
        >>> count = jaxsqrtm.matmul_count(
        ...     "auto", precision="mixed", by_precision=True, backward=True, info=info
        ... )
        >>> sorted(count)
        ['bfloat16', 'float32']
    """
    func = "matmul_count"
    config = configure(
        func,
        method,
        inverse=_validation.check_bool(func, "inverse", inverse),
        precision=precision,
        degree=degree,
        num_iters=num_iters,
        normalization=normalization,
        backward_iters=backward_iters,
    )
    backward = _validation.check_bool(func, "backward", backward)
    if not _validation.check_bool(func, "by_precision", by_precision):
        return TABLE[config.method].cost(config, backward)
    count = TABLE[config.method].cost(config, backward)
    if count is not None:
        return {product_kind(config.precision): count}
    if info is None or info.products is None:
        raise ValueError(
            f"{func}: method={config.method!r} counts depend on the input; pass "
            "info=RootInfo from a call with return_info=True"
        )
    return summed_products(info.products, backward=backward)
