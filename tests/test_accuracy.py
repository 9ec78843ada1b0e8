"""Accuracy of every method against float64 ``eigh`` oracles across condition numbers.

The tables below are measured facts (jax 0.10.2, CPU), not targets: n = 64, geometric
spectrum in [1/kappa, 1], seed 0, largest per-matrix relative Frobenius error over the
batch. Each assertion allows 1.5x the measured figure. They document how the paper's
settings (Frobenius scaling, Padé [5/5], Taylor 10, Newton–Schulz 5, 8 backward
iterations) degrade with kappa; the approximation error dominates round-off, so float32
and float64 agree for every method but ``eigh`` and the accurate ``auto``. (At kappa =
1e8 in float32, the eigenvalues below the noise floor ``2 n^(1/4) eps max|l|``, 6.7e-7
here, count as zero for ``auto`` and ``eigh``, which return the root of the PSD part
without them and its pseudo-inverse: their figures there measure that cut. Clamped
float32 ``eigh`` measured 3.6e-4 for the root.) ``tests/test_accurate.py`` holds the
accurate mode's own table.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsqrtm
from jaxsqrtm import testing

KAPPAS = (1.0, 1e1, 1e2, 1e4, 1e6, 1e8)
N = 64

# (method, inverse) -> (forward errors, gradient errors), one per kappa in KAPPAS.
MEASURED = {
    # accurate mode, float32; entries below float32 eps are recorded as eps (round-off)
    ("auto", False): (
        (1.2e-7, 2.0e-7, 2.6e-7, 1.1e-6, 6.8e-6, 8.1e-4),
        (1.6e-7, 3.1e-7, 4.4e-7, 1.8e-5, 1.0e-3, 9.5e-1),
    ),
    ("auto", True): (
        (1.2e-7, 2.3e-7, 4.3e-7, 3.3e-5, 1.9e-3, 9.9e-1),
        (2.3e-7, 4.9e-7, 1.0e-6, 9.8e-5, 4.2e-3, 1.0),
    ),
    ("mpa", False): (
        (5.9e-4, 1.0e-2, 6.4e-2, 2.1e-1, 3.0e-1, 3.5e-1),
        (5.9e-4, 1.7e-2, 2.0e-1, 8.1e-1, 9.7e-1, 1.0),
    ),
    ("mpa", True): (
        (5.9e-4, 2.5e-2, 2.8e-1, 8.7e-1, 9.8e-1, 1.0),
        (1.9e-3, 7.6e-2, 6.6e-1, 1.0, 1.0, 1.0),
    ),
    ("mtp", False): (
        (2.5e-2, 8.7e-2, 2.3e-1, 4.8e-1, 6.2e-1, 7.2e-1),
        (2.4e-2, 1.2e-1, 4.4e-1, 9.0e-1, 9.9e-1, 1.0),
    ),
    ("mtp", True): (
        (9.0e-2, 3.1e-1, 6.6e-1, 9.5e-1, 9.9e-1, 1.0),
        (2.5e-1, 6.8e-1, 9.7e-1, 1.0, 1.0, 1.0),
    ),
    ("ns", False): (
        (2.3e-1, 2.4e-1, 2.2e-1, 1.7e-1, 1.4e-1, 1.2e-1),
        (2.3e-1, 1.6e-1, 3.5e-1, 8.5e-1, 9.8e-1, 1.0),
    ),
    ("ns", True): (
        (2.3e-1, 4.1e-1, 6.8e-1, 9.5e-1, 9.9e-1, 1.0),
        (7.0e-1, 8.8e-1, 9.9e-1, 1.0, 1.0, 1.0),
    ),
    # float32 eigh: round-off times the conditioning (sqrt(kappa)/2 or kappa/2).
    ("eigh", False): (
        (6.8e-7, 8.8e-7, 8.9e-7, 2.5e-6, 1.4e-4, 8.1e-4),
        (7.6e-7, 1.1e-6, 1.5e-6, 6.0e-5, 4.8e-2, 9.5e-1),
    ),
    ("eigh", True): (
        (4.9e-7, 8.7e-7, 2.3e-6, 1.2e-4, 8.3e-2, 9.9e-1),
        (7.8e-7, 1.6e-6, 4.8e-6, 2.8e-4, 2.2e-1, 1.1),
    ),
}
EIGH_FLOAT64 = 1e-14
AUTO_FLOAT64 = {  # measured x ~1.5: round-off times the conditioning
    False: (
        (1e-14, 1e-14, 1e-14, 1e-14, 1e-13, 5e-13),
        (1e-14, 1e-14, 1e-14, 2e-13, 1.5e-11, 1e-9),
    ),
    True: (
        (1e-14, 1e-14, 1e-14, 3e-13, 2.5e-11, 1.5e-9),
        (1e-14, 1e-14, 1.5e-14, 1e-12, 6e-11, 5e-9),
    ),
}


def root_and_vjp(a, g, method, inverse, **knobs):
    """Forward value and ``dl/dA`` for cotangent ``g`` of one method."""
    root = jaxsqrtm.inv_sqrtm if inverse else jaxsqrtm.sqrtm
    out, vjp = jax.vjp(lambda x: root(x, method=method, **knobs), jnp.asarray(a))
    return np.asarray(out), np.asarray(vjp(jnp.asarray(g))[0])


def per_matrix_errors(a, g, method, inverse, **knobs):
    out, grad = root_and_vjp(a, g, method, inverse, **knobs)
    ref = testing.sqrtm_reference(a, inverse=inverse)
    ref_grad = testing.sqrtm_vjp_reference(a, g, inverse=inverse)
    forward = [testing.relative_error(o, r) for o, r in zip(out, ref, strict=True)]
    backward = [testing.relative_error(o, r) for o, r in zip(grad, ref_grad, strict=True)]
    return np.array(forward), np.array(backward)


def kappa_sweep(dtype):
    """One matrix per kappa, stacked: batch elements are independent, so one compile."""
    a = np.stack([testing.spd_matrix(N, k, seed=0) for k in KAPPAS]).astype(dtype)
    g = np.random.default_rng(1).standard_normal(a.shape).astype(dtype)
    return a, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("method", "inverse"), list(MEASURED))
def test_error_against_kappa(method, inverse, dtype):
    a, g = kappa_sweep(dtype)
    forward, backward = per_matrix_errors(a, g, method, inverse)
    if method == "eigh" and dtype == np.float64:
        np.testing.assert_array_less(forward, EIGH_FLOAT64)
        np.testing.assert_array_less(backward, EIGH_FLOAT64)
        return
    if method == "auto" and dtype == np.float64:
        np.testing.assert_array_less(forward, AUTO_FLOAT64[inverse][0])
        np.testing.assert_array_less(backward, AUTO_FLOAT64[inverse][1])
        return
    measured_forward, measured_backward = (np.array(t) for t in MEASURED[method, inverse])
    for got, measured in ((forward, measured_forward), (backward, measured_backward)):
        finite = np.isfinite(measured)
        np.testing.assert_array_less(got[finite], 1.5 * measured[finite])


def test_eigh_oracle_matches_construction():
    """The oracle itself: eigh of U diag(l) U^T reproduces U diag(sqrt(l)) U^T."""
    rng = np.random.default_rng(0)
    lam = testing.spectrum(32, 1e6, "marchenko_pastur")
    u = testing.random_orthogonal(32, rng)
    a = (u * lam) @ u.T
    exact = (u * np.sqrt(lam)) @ u.T
    assert testing.relative_error(testing.sqrtm_reference(a), exact) < 1e-12


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("method", ["mpa", "mtp"])
def test_paper_configuration_matches_float64_formula(method, inverse):
    """Default knobs are the paper's: the float32 result equals a float64 evaluation of the
    same rational/polynomial function of A / ||A||_F, applied to the eigenvalues."""
    a = testing.spd_matrix(48, 1e3, kind="marchenko_pastur", batch=(3,), seed=2)
    a32 = a.astype(np.float32)
    a64 = a32.astype(np.float64)
    root = jaxsqrtm.inv_sqrtm if inverse else jaxsqrtm.sqrtm
    got = np.asarray(root(jnp.asarray(a32), method=method))

    w, v = np.linalg.eigh(a64)
    c = np.linalg.norm(a64, axis=(-2, -1))[:, None]
    x = w / c
    if method == "mpa":
        p = np.polynomial.polynomial.polyval(x, [1, 55, 330, 462, 165, 11])
        q = np.polynomial.polynomial.polyval(x, [11, 165, 462, 330, 55, 1])
        f = q / p if inverse else p / q
    else:
        from math import comb

        z = 1 - x
        if inverse:
            f = sum(comb(2 * k, k) / 4**k * z**k for k in range(11))
        else:
            f = 1 - sum(comb(2 * k, k) / (4**k * (2 * k - 1)) * z**k for k in range(1, 11))
    f = f * (c ** (-0.5) if inverse else c**0.5)
    expected = (v * f[:, None, :]) @ np.swapaxes(v, -1, -2)
    # float32 round-off amplified by the solve: measured 1.1e-6 (mpa) / 3e-7 (mtp).
    assert testing.relative_error(got, expected) < 5e-6


def lyapunov_recurrence_oracle(s, g, num_iters, scale):
    """The backward's Newton–Schulz sign iteration on the block matrix ``[[B, C], [0, -B]]``
    run on eigenvalues in float64.

    In the eigenbasis of ``S`` each entry contracts as
    ``C_ij <- C_ij (3 - b_i^2 - b_j^2 + b_i b_j) / 2`` while ``b <- (3b - b^3) / 2``.
    """
    lam, v = np.linalg.eigh(s)
    b = lam / scale
    c = v.T @ ((g + g.T) / 2) @ v / scale
    for _ in range(num_iters):
        c = c * (3 - b[:, None] ** 2 - b[None, :] ** 2 + b[:, None] * b[None, :]) / 2
        b = (3 * b - b**3) / 2
    return v @ (c / 2) @ v.T


def test_paper_backward_is_eight_sign_iterations():
    """Default backward = 8 Newton–Schulz iterations from S / sqrt(||A||_F), which is
    not converged at kappa = 1e2: it matches the truncated float64 recurrence, not the
    exact gradient."""
    a = testing.spd_matrix(32, 1e2, seed=3)
    g = np.random.default_rng(4).standard_normal(a.shape)
    out, grad = root_and_vjp(a, g, "mpa", False)
    expected = lyapunov_recurrence_oracle(out, g, 8, np.sqrt(np.linalg.norm(a)))
    assert testing.relative_error(grad, expected) < 1e-12
    assert testing.relative_error(grad, testing.sqrtm_vjp_reference(a, g)) > 1e-2


@pytest.mark.parametrize(
    ("inverse", "forward_tol", "backward_tol"), [(False, 1e-10, 1e-10), (True, 2e-10, 5e-10)]
)
def test_knobs_buy_accuracy(inverse, forward_tol, backward_tol):
    """Padé [16/16], spectral scaling and 24 backward iterations, float64, kappa <= 10:
    measured forward 4e-11 (inverse 1.2e-10), gradient 6e-11 (inverse 3e-10)."""
    a, g = kappa_sweep(np.float64)
    forward, backward = per_matrix_errors(
        a[:2], g[:2], "mpa", inverse, degree=16, normalization="spectral", backward_iters=24
    )
    np.testing.assert_array_less(forward, forward_tol)
    np.testing.assert_array_less(backward, backward_tol)


def test_float32_pade_degree_is_limited_by_conditioning():
    """In float32 a high Padé degree hurts: ``cond Q(A_hat)`` grows like
    ``(2 / (1 + sqrt(w_min)))^(2m+1)``. At kappa = 10 (spectral scaling) degree 8 gives
    8e-6, degree 16 gives 4.4e-3 (measured)."""
    a, g = kappa_sweep(np.float32)
    errors = [
        per_matrix_errors(a[1:2], g[1:2], "mpa", False, degree=d, normalization="spectral")[0][0]
        for d in (8, 16)
    ]
    assert errors[0] < 1.5 * 8.0e-6
    assert errors[1] > 1e-3


@pytest.mark.parametrize("kind", testing.SPECTRA)
def test_ns_with_enough_iterations_converges(kind):
    a = testing.spd_matrix(32, 1e2, kind=kind, seed=5)
    out = jaxsqrtm.sqrtm(a, method="ns", num_iters=20, normalization="spectral")
    assert testing.relative_error(out, testing.sqrtm_reference(a)) < 1e-12


def test_real_covariance_digits():
    """Digits pixel covariance (rank 61 of 64, float32), measured: eigh 4.2e-5 (the root
    of round-off-sized eigenvalues), the paper's MPA 0.186 (a rough normalisation)."""
    a = testing.digits_covariance().astype(np.float32)
    ref = testing.sqrtm_reference(a)
    assert testing.relative_error(jaxsqrtm.sqrtm(a, method="eigh"), ref) < 1e-4
    assert testing.relative_error(jaxsqrtm.sqrtm(a, method="mpa"), ref) < 0.25
