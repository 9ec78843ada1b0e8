"""``solve_lyapunov``: S X + X S = G by the matrix sign iteration."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import jaxsqrtm
from jaxsqrtm import _lyapunov, testing
from jaxsqrtm._methods import accurate


def exact_solution(s, g):
    """X_ij = G_ij / (s_i + s_j) in the eigenbasis of S, float64."""
    lam, v = np.linalg.eigh(s)
    return v @ ((v.T @ g @ v) / (lam[:, None] + lam[None, :])) @ v.T


@pytest.mark.parametrize("symmetric_rhs", [False, True])
@pytest.mark.parametrize(("kappa", "num_iters", "tol"), [(10.0, 12, 1e-12), (1e3, 24, 1e-12)])
def test_solves_to_float64_roundoff(kappa, num_iters, tol, symmetric_rhs):
    s = testing.spd_matrix(24, kappa, seed=1)
    g = np.random.default_rng(2).standard_normal((24, 24))
    if symmetric_rhs:
        g = (g + g.T) / 2
    x = jaxsqrtm.solve_lyapunov(
        s, g, num_iters=num_iters, symmetric_rhs=symmetric_rhs, normalization="spectral"
    )
    assert testing.relative_error(x, exact_solution(s, g)) < tol
    np.testing.assert_allclose(s @ x + x @ s, g, atol=1e-10)


@pytest.mark.parametrize("num_iters", [20, None])
def test_symmetric_rhs_reads_the_symmetric_part(num_iters):
    """The 2-product step keeps (and would grow by 3/2 a step) any antisymmetric part of
    the right-hand side, so the solver must drop it before iterating."""
    s = testing.spd_matrix(8, 5.0, seed=3)
    g = np.random.default_rng(4).standard_normal((8, 8))
    x = jaxsqrtm.solve_lyapunov(s, g, num_iters=num_iters, symmetric_rhs=True)
    assert testing.relative_error(x, exact_solution(s, (g + g.T) / 2)) < 1e-12


def test_replayed_steps_solve_the_square_roots_equation():
    """The forward iteration's step sizes take the spectrum of A_hat^(1/2) to 1, so
    replayed on B = A_hat^(1/2) they solve B X + X B = G without measuring anything:
    float64 round-off, each matrix of a batch with its own step count."""
    a = np.stack([testing.spd_matrix(16, kappa, seed=8) for kappa in (10.0, 1e4)])
    a_hat = jnp.asarray(a / np.linalg.eigvalsh(a).max(axis=-1)[:, None, None])
    *_, iterations, alphas = accurate.scaled_newton_schulz_roots(
        a_hat, max_iters=40, precision=jax.lax.Precision.HIGHEST
    )
    assert iterations[0] < iterations[1]  # measured 6 and 10
    b = testing.sqrtm_reference(a_hat)
    g = np.random.default_rng(9).standard_normal(a.shape)
    g = g + np.swapaxes(g, -1, -2)
    x = _lyapunov.replayed_sign_lyapunov(
        jnp.asarray(b), g, alphas, iterations, precision=jax.lax.Precision.HIGHEST
    )
    for xi, bi, gi in zip(x, b, g, strict=True):
        assert testing.relative_error(xi, exact_solution(bi, gi)) < 1e-13  # 1.1e-15, 3.1e-15


def test_batched_and_broadcast():
    s = testing.spd_matrix(6, 4.0, batch=(3,), seed=5)
    g = np.random.default_rng(6).standard_normal((6, 6))
    x = jaxsqrtm.solve_lyapunov(s, g, num_iters=20)
    assert x.shape == (3, 6, 6)
    for xi, si in zip(x, s, strict=True):
        assert testing.relative_error(xi, exact_solution(si, g)) < 1e-12


def test_float32_stays_float32_and_zero_s_gives_zero():
    s = np.zeros((2, 4, 4), np.float32)
    s[1] = np.eye(4)
    x = jaxsqrtm.solve_lyapunov(s, np.ones((4, 4), np.float32))
    assert x.dtype == jnp.float32
    np.testing.assert_array_equal(x[0], 0)
    np.testing.assert_allclose(x[1], 0.5, rtol=1e-6)


@pytest.mark.parametrize(
    ("num_iters", "symmetric_rhs"), [(30, False), (30, True), (None, False), (None, True)]
)
def test_differentiable_in_every_mode(num_iters, symmetric_rhs):
    """X is differentiated as the solution of S X + X S = G (implicitly), in S and G, in
    forward and reverse mode and to second order; the iterations are converged here, so
    finite differences of the computed X agree."""
    s = jnp.asarray(testing.spd_matrix(5, 3.0, seed=7))
    g = jnp.asarray(np.random.default_rng(8).standard_normal((5, 5)))
    if symmetric_rhs:
        g = g + g.T

    def solve(s, g):
        return jaxsqrtm.solve_lyapunov(s, g, num_iters=num_iters, symmetric_rhs=symmetric_rhs)

    jax.test_util.check_grads(solve, (s, g), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_iters": 2.5}, TypeError),
        ({"num_iters": -1}, ValueError),
        ({"normalization": "max"}, ValueError),
        ({"precision": "fastest"}, ValueError),
        ({"symmetric_rhs": "yes"}, TypeError),
        ({"num_iters": None, "normalization": "spectral"}, ValueError),  # not a bound
    ],
)
def test_bad_knobs(kwargs, error):
    with pytest.raises(error):
        jaxsqrtm.solve_lyapunov(jnp.eye(3), jnp.eye(3), **kwargs)


def test_size_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(3, 3\) and \(4, 4\)"):
        jaxsqrtm.solve_lyapunov(jnp.eye(3), jnp.eye(4))
