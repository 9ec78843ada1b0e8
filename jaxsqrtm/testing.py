"""Test matrices and float64 reference values, shared by the tests, benchmark and demos.

Everything here is NumPy in float64: prescribed-spectrum SPD matrices ``U diag(l) U^T``,
real covariance matrices from data that ships with scikit-learn / scikit-image, and the
reference root and gradient from ``numpy.linalg.eigh`` with the Daleckii–Krein
divided-difference formula.
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


def spd_matrix(
    n: int,
    kappa: float = 10.0,
    *,
    kind: str = "geometric",
    batch: tuple[int, ...] = (),
    scale: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """SPD matrices ``scale * U diag(l) U^T`` with prescribed spectrum, float64.

    Each batch element gets its own random ``U`` and the same eigenvalues
    :func:`spectrum` ``(n, kappa, kind)``; the result is exactly symmetric.

    Returns:
        ``batch + (n, n)`` float64 array.
    """
    rng = np.random.default_rng(seed)
    lam = spectrum(n, kappa, kind)
    count = int(np.prod(batch, dtype=int))
    mats = np.empty((count, n, n))
    for i in range(count):
        u = random_orthogonal(n, rng)
        a = (u * lam) @ u.T
        mats[i] = scale * (a + a.T) / 2
    return mats.reshape(*batch, n, n)


def covariance(features: np.ndarray) -> np.ndarray:
    """Sample covariance of ``(..., samples, channels)`` features, float64."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=-2, keepdims=True)
    return np.swapaxes(x, -1, -2) @ x / x.shape[-2]


def digits_covariance() -> np.ndarray:
    """``64 x 64`` pixel covariance of scikit-learn's 1797 digit images (needs scikit-learn).

    Rank-deficient: a few border pixels are always 0. Add a ridge for the inverse root.
    """
    from sklearn.datasets import load_digits

    return covariance(load_digits().data / 16.0)


def image_patch_covariance(name: str = "astronaut", patch: int = 8, stride: int = 4) -> np.ndarray:
    """Covariance of grey-level ``patch x patch`` patches of an ``skimage.data`` image.

    A real, full-rank, ill-conditioned covariance of size ``patch**2`` (needs
    scikit-image).
    """
    from skimage import color, data

    image = getattr(data, name)()
    grey = color.rgb2gray(image) if image.ndim == 3 else image / 255.0
    windows = np.lib.stride_tricks.sliding_window_view(grey, (patch, patch))[::stride, ::stride]
    return covariance(windows.reshape(-1, patch * patch))


def sqrtm_reference(a, *, inverse: bool = False) -> np.ndarray:
    """``A^(1/2)`` or ``A^(-1/2)`` in float64 via ``numpy.linalg.eigh`` of ``(A + A^T)/2``.

    Negative eigenvalues (round-off of a PSD matrix) are clamped to 0 for the root.
    """
    w, v = np.linalg.eigh(_symmetric64(a))
    f = 1 / np.sqrt(w) if inverse else np.sqrt(np.maximum(w, 0))
    return (v * f[..., None, :]) @ np.swapaxes(v, -1, -2)


def sqrtm_vjp_reference(a, g, *, inverse: bool = False) -> np.ndarray:
    """``dl/dA`` for ``l`` with cotangent ``g = dl/dA^(+-1/2)``: Daleckii–Krein, float64.

    ``V [(V^T G_sym V) o F] V^T`` with ``F_ij = (f(l_i) - f(l_j)) / (l_i - l_j)`` written
    as ``1 / (s_i + s_j)`` (root) or ``-1 / (s_i s_j (s_i + s_j))`` (inverse root),
    ``s = sqrt(l)``.
    """
    w, v = np.linalg.eigh(_symmetric64(a))
    s = np.sqrt(np.maximum(w, 0))
    f = 1 / (s[..., :, None] + s[..., None, :])
    if inverse:
        f = -f / (s[..., :, None] * s[..., None, :])
    vt = np.swapaxes(v, -1, -2)
    return v @ ((vt @ _symmetric64(g) @ v) * f) @ vt


def relative_error(x, reference) -> float:
    """Largest per-matrix relative Frobenius error ``||X - R||_F / ||R||_F`` over a batch."""
    x = np.asarray(x, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    num = np.linalg.norm(x - reference, axis=(-2, -1))
    den = np.linalg.norm(reference, axis=(-2, -1))
    return float(np.max(num / den)) if num.size else 0.0


def _symmetric64(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a + np.swapaxes(a, -1, -2)) / 2
