"""Complex Hermitian input: accuracy, dtypes, derivatives and the Lyapunov solve.

Inputs are prescribed-spectrum Hermitian matrices ``U diag(l) U^H`` with a Haar unitary
``U`` (``testing.spd_matrix(dtype=np.complex128)``) and the oracles are complex128
``eigh`` with Daleckii–Krein divided differences (``testing.sqrtm_reference``,
``testing.sqrtm_vjp_reference``, which follows JAX's convention for complex cotangents).
Float64/complex128 needs ``jax_enable_x64``, which ``conftest.py`` turns on.

The tables are measured facts (jax 0.10.2, CPU): n = 16, geometric spectrum in
``[1/kappa, 1]``, seed 0, largest per-matrix relative Frobenius error. For ``"mpa"``,
``"mtp"`` and ``"ns"`` the approximation error dominates and is a function of the
spectrum only: the complex64 figures equal the float32 ones of the real matrices with
the same spectrum to two digits, and complex128 gives the same figures again. For
``"auto"`` and ``"eigh"`` they are round-off, within 3x of the real ones. Each
assertion allows twice the measured figure plus ``4 eps`` of the dtype (round-off
differs between BLAS builds).
"""

import re

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import jaxsqrtm
from jaxsqrtm import testing

KAPPAS = (1e1, 1e3, 1e6)
N = 16

# (method, dtype) -> {inverse: (forward errors, gradient errors)}, one per kappa in KAPPAS.
MEASURED = {
    ("auto", np.complex64): {
        False: ((1.7e-7, 4.6e-7, 8.9e-6), (2.3e-7, 1.5e-6, 4.9e-4)),
        True: ((1.9e-7, 3.4e-6, 1.7e-3), (4.4e-7, 6.2e-6, 3.2e-3)),
    },
    ("mpa", np.complex64): {
        False: ((2.1e-3, 8.7e-2, 2.0e-1), (3.4e-3, 5.0e-1, 9.6e-1)),
        True: ((6.0e-3, 5.9e-1, 9.8e-1), (1.8e-2, 9.5e-1, 1.0)),
    },
    ("mtp", np.complex64): {
        False: ((3.1e-2, 2.4e-1, 4.3e-1), (4.7e-2, 6.8e-1, 9.8e-1)),
        True: ((1.8e-1, 8.4e-1, 9.9e-1), (4.4e-1, 1.0, 1.0)),
    },
    ("ns", np.complex64): {
        False: ((5.9e-2, 9.0e-2, 6.6e-2), (1.8e-1, 4.9e-1, 9.6e-1)),
        True: ((1.4e-1, 7.8e-1, 9.9e-1), (5.1e-1, 1.0, 1.0)),
    },
    ("eigh", np.complex64): {
        False: ((9.0e-7, 8.0e-7, 7.8e-6), (9.9e-7, 4.7e-6, 1.5e-3)),
        True: ((7.7e-7, 5.2e-6, 2.0e-3), (1.2e-6, 1.6e-5, 4.4e-3)),
    },
    # complex128: only the round-off-limited methods (the others repeat complex64's table)
    ("auto", np.complex128): {
        False: ((1.4e-15, 1.6e-15, 1.8e-14), (1.6e-15, 9.0e-15, 3.3e-12)),
        True: ((1.0e-15, 1.7e-14, 3.2e-12), (1.8e-15, 3.2e-14, 1.5e-11)),
    },
    ("eigh", np.complex128): {
        False: ((1.4e-16, 1.1e-16, 1.2e-16), (4.3e-16, 4.8e-16, 5.1e-16)),
        True: ((1.4e-16, 1.3e-16, 1.1e-16), (4.8e-16, 4.3e-16, 6.9e-16)),
    },
}
CONVERGED = testing.CONVERGED_KNOBS


def hermitian(n, kappa, *, seed, **kwargs):
    return testing.spd_matrix(n, kappa, seed=seed, dtype=np.complex128, **kwargs)


def complex_normal(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def both_roots(method, **knobs):
    """``a -> (A^(1/2), A^(-1/2))`` of one method."""

    def roots(a):
        return (
            jaxsqrtm.sqrtm(a, method=method, **knobs),
            jaxsqrtm.inv_sqrtm(a, method=method, **knobs),
        )

    return roots


def kappa_sweep():
    """One matrix per kappa (complex128) and a complex cotangent."""
    a = np.stack([hermitian(N, k, seed=0) for k in KAPPAS])
    return a, complex_normal(a.shape, 1)


@pytest.mark.parametrize(("method", "dtype"), list(MEASURED))
def test_error_against_kappa(method, dtype):
    """Roots and gradients against the complex128 oracles; complex in, same dtype out."""
    a, g = kappa_sweep()
    g = g.astype(dtype)

    @jax.jit
    def roots_and_vjps(a, g):
        out, vjp = jax.vjp(both_roots(method), a)
        return out, [vjp((g, jnp.zeros_like(g)))[0], vjp((jnp.zeros_like(g), g))[0]]

    outs, grads = roots_and_vjps(jnp.asarray(a, dtype), jnp.asarray(g))
    eps = float(jnp.finfo(dtype).eps)
    for inverse, out, grad in zip((False, True), outs, grads, strict=True):
        assert out.dtype == dtype and grad.dtype == dtype
        ref = testing.sqrtm_reference(a, inverse=inverse)
        ref_grad = testing.sqrtm_vjp_reference(a, g, inverse=inverse)
        forward = [testing.relative_error(o, r) for o, r in zip(out, ref, strict=True)]
        backward = [testing.relative_error(o, r) for o, r in zip(grad, ref_grad, strict=True)]
        measured = MEASURED[method, dtype][inverse]
        for got, figures in zip((forward, backward), measured, strict=True):
            np.testing.assert_array_less(got, 2 * np.array(figures) + 4 * eps)


@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_check_grads_complex128(method):
    """Forward and reverse mode of both roots against finite differences in complex128,
    with complex, non-Hermitian tangents and cotangents (the input's Hermitian part is
    what is differentiated)."""
    a = jnp.asarray(hermitian(4, 2.0, seed=11))
    jax.test_util.check_grads(
        both_roots(method, **CONVERGED[method]), (a,), order=1, modes=("fwd", "rev")
    )


@pytest.mark.parametrize("inverse", [False, True])
def test_gradient_matches_daleckii_krein(inverse):
    """``jax.grad`` of a real loss of the root (the closed form's Lyapunov rule, converged
    knobs, kappa 2) equals the complex128 Daleckii–Krein gradient in JAX's convention:
    measured 2.2e-15 (root) and 4.6e-15 (inverse), asserted at 1e-14."""
    root = jaxsqrtm.inv_sqrtm if inverse else jaxsqrtm.sqrtm
    a = hermitian(8, 2.0, seed=4)
    weights = jnp.asarray(complex_normal((8, 8), 5))

    def loss_of_root(x):
        return jnp.sum(jnp.abs(jnp.sin(x * weights)) ** 2)

    def loss(a):
        return loss_of_root(root(a, method="mpa", **CONVERGED["mpa"]))

    grad = jax.grad(loss)(jnp.asarray(a))
    g = jax.grad(loss_of_root)(jnp.asarray(testing.sqrtm_reference(a, inverse=inverse)))
    reference = testing.sqrtm_vjp_reference(a, g, inverse=inverse)
    assert testing.relative_error(grad, reference) < 1e-14


@pytest.mark.parametrize("method", ["auto", "eigh"])
def test_density_matrices(method):
    """Quantum states: a pure state is its own square root; mixed states with repeated
    eigenvalues (rank 3 of 8, and full rank) match the oracle. Measured in complex128:
    pure state 4e-16 absolute, mixed 1.4e-8 (rank 3: the oracle's own floor, the root of
    eigenvalues of order eps) and 5e-16 (full rank)."""
    pure = testing.density_matrix(8, rank=1, seed=1)
    mixed = np.stack(
        [
            testing.density_matrix(8, rank=3, degenerate=True, seed=2),
            testing.density_matrix(8, degenerate=True, seed=3),
        ]
    )
    root = jaxsqrtm.sqrtm(jnp.asarray(pure), method=method)
    np.testing.assert_allclose(root, pure, rtol=0, atol=1e-14)
    roots = jaxsqrtm.sqrtm(jnp.asarray(mixed), method=method)
    ref = testing.sqrtm_reference(mixed)
    assert testing.relative_error(roots[0], ref[0]) < 1e-7
    assert testing.relative_error(roots[1], ref[1]) < 1e-14


def lyapunov_reference(s, g):
    """``X_ij = G~_ij / (s_i + s_j)`` in the eigenbasis of Hermitian ``S``, complex128."""
    w, v = np.linalg.eigh(s)
    vh = v.conj().T
    return v @ ((vh @ g @ v) / (w[:, None] + w[None, :])) @ vh


@pytest.mark.parametrize("symmetric_rhs", [False, True])
@pytest.mark.parametrize("num_iters", [None, 30])
def test_solve_lyapunov(num_iters, symmetric_rhs):
    """Hermitian ``S`` (kappa 20), complex ``G`` (Hermitian with ``symmetric_rhs``):
    measured 1.1e-15 in complex128 and 3.6e-7 in complex64, whose dtype is kept."""
    s = hermitian(5, 20.0, seed=3)
    g = complex_normal((5, 5), 0)
    if symmetric_rhs:
        g = (g + g.conj().T) / 2
    ref = lyapunov_reference(s, g)
    for dtype, tol in ((np.complex128, 1e-14), (np.complex64, 2e-6)):
        x = jaxsqrtm.solve_lyapunov(
            s.astype(dtype), g.astype(dtype), num_iters=num_iters, symmetric_rhs=symmetric_rhs
        )
        assert x.dtype == dtype
        assert testing.relative_error(x, ref) < tol


def test_solve_lyapunov_check_grads_complex128():
    """Derivatives in ``S`` and ``G``; the reverse mode relies on the transposed solve
    with ``conj(S)`` (a non-conjugating transpose of ``L_S``)."""
    s = jnp.asarray(hermitian(4, 5.0, seed=3))
    g = jnp.asarray(complex_normal((4, 4), 2))

    def solve(s, g):
        return jaxsqrtm.solve_lyapunov(s, g, num_iters=None)

    jax.test_util.check_grads(solve, (s, g), order=1, modes=("fwd", "rev"))


COMPLEX_OPS = re.compile(r"\b(conj|real|imag|complex|c64|c128)\b|\bc(64|128)\[")


@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_real_input_traces_no_complex_operation(method):
    """Real input keeps its program: forward and gradient of float32 and float64 input
    contain no conjugate, real/imaginary part or complex array (the complex branches
    are chosen at trace time)."""
    weights = jnp.arange(16.0).reshape(4, 4) / 16
    a = testing.spd_matrix(4, 10.0, seed=1)
    for dtype in (np.float32, np.float64):

        def loss(a):
            roots = both_roots(method)(a)
            return sum(jnp.sum(jnp.sin(r * weights.astype(a.dtype))) for r in roots)

        text = str(jax.make_jaxpr(jax.value_and_grad(loss))(jnp.asarray(a, dtype)))
        assert not COMPLEX_OPS.search(text), COMPLEX_OPS.search(text)


@pytest.mark.parametrize("num_iters", [None, 8])
def test_real_lyapunov_traces_no_complex_operation(num_iters):
    """The same for :func:`jaxsqrtm.solve_lyapunov` with real ``S`` and ``G``."""
    s = jnp.asarray(testing.spd_matrix(4, 10.0, seed=1))

    def loss(s, g):
        return jnp.sum(jnp.sin(jaxsqrtm.solve_lyapunov(s, g, num_iters=num_iters)))

    text = str(jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(s, s + 1))
    assert not COMPLEX_OPS.search(text), COMPLEX_OPS.search(text)
