"""Test matrices and float64 reference values, shared by the tests, benchmark and demos.

Everything here is NumPy in float64 (complex128 for complex input): prescribed-spectrum
SPD matrices ``U diag(l) U^T`` (Hermitian ``U diag(l) U^H`` with ``dtype=np.complex128``),
density matrices, real covariance matrices from data that ships with scikit-learn /
scikit-image, and the reference root and gradient from ``numpy.linalg.eigh`` with the
Daleckii–Krein divided-difference formula.
"""

from __future__ import annotations

import numpy as np

SPECTRA = ("geometric", "clustered", "marchenko_pastur")


def spectrum(n: int, kappa: float, kind: str = "geometric") -> np.ndarray:
    """``n`` eigenvalues in ``[1/kappa, 1]`` (largest exactly 1, smallest exactly 1/kappa).

    Args:
        n: number of eigenvalues.
        kappa: condition number (``>= 1``).
        kind: ``"geometric"`` (evenly spaced on a log scale), ``"clustered"`` (one
            eigenvalue at 1, the rest at ``1/kappa``: a large repeated eigenvalue) or
            ``"marchenko_pastur"`` (quantiles of the Marchenko–Pastur law whose edges
            have ratio ``kappa``, the spectrum of a sample covariance).

    Returns:
        ``(n,)`` float64 eigenvalues in decreasing order.
    """
    if kind == "geometric":
        lam = np.logspace(0, -np.log10(kappa), n) if n > 1 else np.ones(1)
    elif kind == "clustered":
        lam = np.full(n, 1 / kappa)
        lam[0] = 1
    elif kind == "marchenko_pastur":
        lam = _marchenko_pastur_quantiles(n, kappa)
    else:
        raise ValueError(f"kind must be one of {SPECTRA}, got {kind!r}")
    return np.sort(lam)[::-1]


def _marchenko_pastur_quantiles(n: int, kappa: float) -> np.ndarray:
    if n == 1 or kappa == 1:
        return np.ones(n)
    # Edges (1 -+ sqrt(y))^2 have ratio kappa for sqrt(y) = (sqrt(kappa)-1)/(sqrt(kappa)+1).
    r = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    lo, hi = (1 - r) ** 2, (1 + r) ** 2
    x = np.linspace(lo, hi, 20001)
    density = np.sqrt(np.maximum((hi - x) * (x - lo), 0)) / x
    cdf = np.concatenate([[0], np.cumsum((density[1:] + density[:-1]) * np.diff(x) / 2)])
    cdf /= cdf[-1]
    lam = np.interp((np.arange(n) + 0.5) / n, cdf, x)
    lam[0], lam[-1] = lo, hi
    return lam / hi


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed ``n x n`` orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def random_unitary(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed ``n x n`` unitary matrix (QR of a complex Gaussian, phases fixed).

    Returns:
        ``(n, n)`` complex128 array.
    """
    z = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / np.sqrt(2)
    q, r = np.linalg.qr(z)
    d = np.diag(r)
    return q * (d / np.abs(d))


def spd_matrix(
    n: int,
    kappa: float = 10.0,
    *,
    kind: str = "geometric",
    batch: tuple[int, ...] = (),
    scale: float = 1.0,
    seed: int = 0,
    dtype=np.float64,
) -> np.ndarray:
    """SPD matrices ``scale * U diag(l) U^T`` with prescribed spectrum, float64.

    Each batch element gets its own random ``U`` and the same eigenvalues
    :func:`spectrum` ``(n, kappa, kind)``; the result is exactly symmetric. With
    ``dtype=np.complex128`` ``U`` is a Haar unitary (:func:`random_unitary`) and the
    result ``scale * U diag(l) U^H`` is exactly Hermitian positive definite, with the
    same spectrum.

    Returns:
        ``batch + (n, n)`` array of ``dtype`` (``np.float64`` or ``np.complex128``).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.complex128):
        raise ValueError(f"dtype must be float64 or complex128, got {dtype}")
    complex_ = dtype == np.complex128
    rng = np.random.default_rng(seed)
    lam = spectrum(n, kappa, kind)
    count = int(np.prod(batch, dtype=int))
    mats = np.empty((count, n, n), dtype)
    for i in range(count):
        u = random_unitary(n, rng) if complex_ else random_orthogonal(n, rng)
        a = (u * lam) @ u.conj().T if complex_ else (u * lam) @ u.T
        mats[i] = scale * (a + (a.conj().T if complex_ else a.T)) / 2
    return mats.reshape(*batch, n, n)


def density_matrix(
    n: int,
    *,
    rank: int | None = None,
    degenerate: bool = False,
    batch: tuple[int, ...] = (),
    seed: int = 0,
) -> np.ndarray:
    """Quantum density matrices ``rho = U diag(p) U^H``: Hermitian PSD with trace 1.

    ``U`` is a Haar unitary per batch element and ``p`` has ``rank`` positive entries
    summing to 1, the rest 0: :func:`spectrum` ``(rank, 10)`` (geometric, distinct), or
    with ``degenerate`` two levels in the ratio ``2 : 1``, the first on
    ``max(2, ceil(rank / 2))`` eigenvalues and the second on the rest (all equal for
    ``rank = 2``, a repeated pair at least for any ``rank >= 2``). ``rank=1`` is a pure state
    ``psi psi^H``; ``rank < n`` gives singular matrices (a zero eigenvalue of
    multiplicity ``n - rank``).

    Args:
        n: matrix size.
        rank: number of positive eigenvalues, ``1 <= rank <= n`` (default ``n``).
        degenerate: repeated positive eigenvalues instead of distinct ones.
        batch: leading batch shape.
        seed: random seed.

    Returns:
        ``batch + (n, n)`` complex128 array, exactly Hermitian.
    """
    rank = n if rank is None else rank
    if not 1 <= rank <= n:
        raise ValueError(f"rank must be in [1, {n}], got {rank}")
    if degenerate:
        p = np.where(np.arange(rank) < max(2, (rank + 1) // 2), 2.0, 1.0)
    else:
        p = spectrum(rank, 10.0)
    p = np.concatenate([p / p.sum(), np.zeros(n - rank)])
    rng = np.random.default_rng(seed)
    count = int(np.prod(batch, dtype=int))
    mats = np.empty((count, n, n), np.complex128)
    for i in range(count):
        u = random_unitary(n, rng)
        rho = (u * p) @ u.conj().T
        mats[i] = (rho + rho.conj().T) / 2
    return mats.reshape(*batch, n, n)


def covariance(features: np.ndarray) -> np.ndarray:
    """Sample covariance of ``(..., samples, channels)`` features, float64."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=-2, keepdims=True)
    return np.swapaxes(x, -1, -2) @ x / x.shape[-2]


def digits_features() -> np.ndarray:
    """scikit-learn's 1797 ``8 x 8`` digit images as ``(1797, 64)`` float64 pixels in
    ``[0, 1]`` (needs scikit-learn)."""
    from sklearn.datasets import load_digits

    return load_digits().data / 16.0


def digits_covariance() -> np.ndarray:
    """``64 x 64`` pixel covariance of :func:`digits_features` (needs scikit-learn).

    Rank-deficient: a few border pixels are always 0. Add a ridge for the inverse root.
    """
    return covariance(digits_features())


def image_patch_features(name: str = "astronaut", patch: int = 8, stride: int = 4) -> np.ndarray:
    """Grey-level ``patch x patch`` patches of an ``skimage.data`` image, every ``stride``
    pixels, as ``(N, patch**2)`` float64 in ``[0, 1]`` (needs scikit-image)."""
    from skimage import color, data

    image = getattr(data, name)()
    grey = color.rgb2gray(image) if image.ndim == 3 else image / 255.0
    windows = np.lib.stride_tricks.sliding_window_view(grey, (patch, patch))[::stride, ::stride]
    return windows.reshape(-1, patch * patch)


def image_patch_covariance(name: str = "astronaut", patch: int = 8, stride: int = 4) -> np.ndarray:
    """Covariance of :func:`image_patch_features` (needs scikit-image).

    A real, full-rank, ill-conditioned covariance of size ``patch**2``.
    """
    return covariance(image_patch_features(name, patch, stride))


def sqrtm_reference(a, *, inverse: bool = False) -> np.ndarray:
    """``A^(1/2)`` or ``A^(-1/2)`` in float64 via ``numpy.linalg.eigh`` of ``(A + A^T)/2``.

    Complex input is computed in complex128 from the Hermitian part ``(A + A^H) / 2``:
    ``V f(l) V^H``. Negative eigenvalues (round-off of a PSD matrix) are clamped to 0
    for the root.
    """
    w, v = np.linalg.eigh(_symmetric64(a))
    f = 1 / np.sqrt(w) if inverse else np.sqrt(np.maximum(w, 0))
    return (v * f[..., None, :]) @ _adjoint(v)


def sqrtm_vjp_reference(a, g, *, inverse: bool = False) -> np.ndarray:
    """``dl/dA`` for ``l`` with cotangent ``g = dl/dA^(+-1/2)``: Daleckii–Krein, float64.

    ``V [(V^T G_sym V) o F] V^T`` with ``F_ij = (f(l_i) - f(l_j)) / (l_i - l_j)`` written
    as ``1 / (s_i + s_j)`` (root) or ``-1 / (s_i s_j (s_i + s_j))`` (inverse root),
    ``s = sqrt(l)``.

    Complex input (complex128) follows JAX's convention for cotangents, which pair with
    tangents by ``Re sum(dX * G)`` without a conjugate (for a real loss,
    ``jax.grad`` gives ``dl/d Re A - i dl/d Im A``): the result is what ``jax.vjp`` of
    the root returns for ``g``, ``conj(V) [(V^T G_h conj(V)) o F] V^T`` with
    ``G_h = (G + G^H) / 2``, i.e. the formula above for ``A^T = conj(A)``.
    """
    w, v = np.linalg.eigh(_symmetric64(a))
    v = v.conj()
    s = np.sqrt(np.maximum(w, 0))
    f = 1 / (s[..., :, None] + s[..., None, :])
    if inverse:
        f = -f / (s[..., :, None] * s[..., None, :])
    vh = _adjoint(v)
    return v @ ((vh @ _symmetric64(g) @ v) * f) @ vh


def relative_error(x, reference) -> float:
    """Largest per-matrix relative Frobenius error ``||X - R||_F / ||R||_F`` over a batch.

    Computed in float64, or complex128 where either argument is complex.
    """
    dtype = np.complex128 if np.iscomplexobj(x) or np.iscomplexobj(reference) else np.float64
    x = np.asarray(x, dtype=dtype)
    reference = np.asarray(reference, dtype=dtype)
    num = np.linalg.norm(x - reference, axis=(-2, -1))
    den = np.linalg.norm(reference, axis=(-2, -1))
    return float(np.max(num / den)) if num.size else 0.0


def _adjoint(a) -> np.ndarray:
    """Conjugate transpose over the last two axes (plain transpose for real ``a``)."""
    at = np.swapaxes(a, -1, -2)
    return at.conj() if np.iscomplexobj(at) else at


def _symmetric64(a) -> np.ndarray:
    """Symmetric part in float64, Hermitian part in complex128 for complex ``a``."""
    a = np.asarray(a, dtype=np.complex128 if np.iscomplexobj(a) else np.float64)
    return (a + _adjoint(a)) / 2


# Knobs under which each method's forward is converged, so that its custom derivative is
# the exact derivative of the computed function and finite differences can check it.
CONVERGED_KNOBS = {
    "auto": {},
    "mpa": {"degree": 12, "normalization": "spectral", "backward_iters": 24},
    "mtp": {"degree": 40, "normalization": "spectral", "backward_iters": 24},
    "ns": {"num_iters": 12, "normalization": "spectral"},
    "eigh": {},
}


def frechet_distance_reference(x1, x2) -> float:
    """FID of features ``(N1, d)``, ``(N2, d)`` in float64, never forming a covariance.

    ``||mu1 - mu2||^2 + tr S1 + tr S2 - 2 ||F1 F2^T||_* / sqrt((N1 - 1)(N2 - 1))`` with
    ``F`` the centred features (``N <= d``) or ``R`` of their QR, and the nuclear norm
    from ``numpy.linalg.svd``; unbiased covariances, as ``numpy.cov``.
    """
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    n1, n2 = len(x1), len(x2)
    f1 = np.linalg.qr(c1, mode="r") if n1 > c1.shape[1] else c1
    f2 = np.linalg.qr(c2, mode="r") if n2 > c2.shape[1] else c2
    nuclear = np.linalg.svd(f1 @ f2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    traces = (c1**2).sum() / (n1 - 1) + (c2**2).sum() / (n2 - 1)
    return float(((x1.mean(0) - x2.mean(0)) ** 2).sum() + traces - 2 * nuclear)


def rectangular_matrix(
    m: int,
    n: int,
    kappa: float = 10.0,
    *,
    kind: str = "geometric",
    singular_values=None,
    batch: tuple[int, ...] = (),
    scale: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """``scale * P diag(s) Q^T`` (``m x n``) with prescribed singular values, float64.

    ``P`` and ``Q`` are the first ``k = min(m, n)`` columns of Haar orthogonal matrices,
    drawn per batch element; ``s`` is ``singular_values`` (at most ``k`` of them, padded
    with zeros: a rank-deficient matrix) or :func:`spectrum` ``(k, kappa, kind)``
    (largest 1, smallest ``1/kappa``; ``"clustered"`` repeats the smallest).

    Returns:
        ``batch + (m, n)`` float64 array.
    """
    k = min(m, n)
    if singular_values is None:
        s = spectrum(k, kappa, kind)
    else:
        s = np.zeros(k)
        given = np.asarray(singular_values, dtype=np.float64)
        if given.ndim != 1 or len(given) > k:
            raise ValueError(f"need at most {k} singular values, got shape {given.shape}")
        s[: len(given)] = given
    rng = np.random.default_rng(seed)
    count = int(np.prod(batch, dtype=int))
    mats = np.empty((count, m, n))
    for i in range(count):
        p = random_orthogonal(m, rng)[:, :k]
        q = random_orthogonal(n, rng)[:, :k]
        mats[i] = scale * (p * s) @ q.T
    return mats.reshape(*batch, m, n)


def polar_reference(g) -> np.ndarray:
    """The polar factor ``P Q^H`` of the thin SVD ``G = P S Q^H``, float64 (complex128).

    Every singular value is kept: for a rank-deficient ``G`` build the reference from
    its exact range instead.
    """
    g = np.asarray(g, dtype=np.complex128 if np.iscomplexobj(g) else np.float64)
    p, _, qh = np.linalg.svd(g, full_matrices=False)
    return p @ qh


def polar_derivative_reference(g, dg) -> np.ndarray:
    """The derivative of the polar factor of full-rank ``G`` along ``dG``, float64.

    With ``G = P S Q^T`` (``m >= n``; transposed otherwise), ``E = P^T dG Q`` and
    ``F_ij = 1 / (s_i + s_j)``::

        dU = P [F o (E - E^T)] Q^T + (I - P P^T) dG Q S^-1 Q^T.

    The map ``dG -> dU`` is self-adjoint, so the same function gives the reverse-mode
    cotangent ``dl/dG`` of a cotangent ``dl/dU``. Real input only.
    """
    g, dg = np.asarray(g, np.float64), np.asarray(dg, np.float64)
    wide = g.shape[-2] < g.shape[-1]
    if wide:
        g, dg = np.swapaxes(g, -1, -2), np.swapaxes(dg, -1, -2)
    p, s, qh = np.linalg.svd(g, full_matrices=False)
    q = np.swapaxes(qh, -1, -2)
    e = np.swapaxes(p, -1, -2) @ dg @ q
    f = 1 / (s[..., :, None] + s[..., None, :])
    rotation = p @ (f * (e - np.swapaxes(e, -1, -2))) @ qh
    outside = dg - p @ (np.swapaxes(p, -1, -2) @ dg)
    du = rotation + outside @ (q / s[..., None, :]) @ qh
    return np.swapaxes(du, -1, -2) if wide else du


GRADIENT_KINDS = ("heavy_tailed", "power_law", "low_rank", "near_rank_one")


def gradient_like(
    m: int, n: int, *, count: int = 1, kind: str | None = None, seed: int = 0
) -> np.ndarray:
    """``count`` matrices shaped like the weight gradients and momenta of a network, float64.

    Kinds (``kind=None`` cycles through :data:`GRADIENT_KINDS`, matrix ``i`` getting kind
    ``i % 4``), each with a random overall scale ``10^U(-6, 3)``:

    * ``"heavy_tailed"``: ``A diag(w) B^T``, a sum of ``r = max(m, n)`` outer products of
      Gaussian vectors weighted by Student-t (one degree of freedom) samples: a few
      directions dominate;
    * ``"power_law"``: ``P diag(i^-a) Q^T`` with ``a`` uniform in ``[0.5, 3]``: condition
      numbers from 10 to ``1e9``;
    * ``"low_rank"``: ``A B^T`` of rank ``r`` uniform in ``[1, min(m, n) / 4]``, plus
      nothing: exactly rank-deficient in float64, with round-off singular values once
      rounded;
    * ``"near_rank_one"``: ``u v^T`` plus Gaussian noise ``10^U(-4, -1)`` times smaller
      per entry.
    """
    if kind is not None and kind not in GRADIENT_KINDS:
        raise ValueError(f"kind must be one of {GRADIENT_KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    k = min(m, n)
    out = np.empty((count, m, n))
    for i in range(count):
        which = kind or GRADIENT_KINDS[i % len(GRADIENT_KINDS)]
        if which == "heavy_tailed":
            r = max(m, n)
            w = rng.standard_t(1, size=r)
            g = (rng.standard_normal((m, r)) * w) @ rng.standard_normal((r, n))
        elif which == "power_law":
            s = np.arange(1, k + 1, dtype=np.float64) ** -rng.uniform(0.5, 3)
            p, _ = np.linalg.qr(rng.standard_normal((m, k)))
            q, _ = np.linalg.qr(rng.standard_normal((n, k)))
            g = (p * s) @ q.T
        elif which == "low_rank":
            r = int(rng.integers(1, max(k // 4, 1) + 1))
            g = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
        else:
            spike = np.outer(rng.standard_normal(m), rng.standard_normal(n))
            noise = 10 ** rng.uniform(-4, -1) * rng.standard_normal((m, n))
            g = spike + noise
        out[i] = 10 ** rng.uniform(-6, 3) * g / np.abs(g).max()
    return out


def power_reference(a, t: float, *, floor: float = 0.0) -> np.ndarray:
    """``A^t`` of the symmetric part in float64 by ``numpy.linalg.eigh``, PSD semantics.

    Eigenvalues at or below ``floor * max|l|`` count as 0: ``t > 0`` gives the power of
    the PSD part, ``t < 0`` the pseudo-inverse power (0 there). ``floor = 0`` clamps the
    negative eigenvalues only.
    """
    w, v = np.linalg.eigh(_symmetric64(a))
    kept = w > floor * np.abs(w).max(axis=-1, keepdims=True)
    f = np.where(kept, np.where(kept, w, 1) ** t, 0)
    return (v * f[..., None, :]) @ _adjoint(v)


def power_vjp_reference(a, g, t: float) -> np.ndarray:
    """``dl/dA`` for the cotangent ``g = dl/dA^t``, real SPD ``a``: Daleckii–Krein in
    float64, ``F_ij = (l_i^t - l_j^t) / (l_i - l_j)`` and ``t l^(t-1)`` where
    ``l_i = l_j`` (to ``1e-12`` relative)."""
    w, v = np.linalg.eigh(_symmetric64(a))
    f, derivative = w**t, t * w ** (t - 1)
    difference = w[..., :, None] - w[..., None, :]
    tie = np.abs(difference) <= 1e-12 * np.abs(w).max(axis=-1)[..., None, None]
    divided = (f[..., :, None] - f[..., None, :]) / np.where(tie, 1, difference)
    mean_derivative = (derivative[..., :, None] + derivative[..., None, :]) / 2
    vt = np.swapaxes(v, -1, -2)
    return v @ ((vt @ _symmetric64(g) @ v) * np.where(tie, mean_derivative, divided)) @ vt
