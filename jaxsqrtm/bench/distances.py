"""The ``distances`` workload: the Fréchet distance (FID) of real-image features, side by side.

Each case is a pair of feature sets: grey patches of ``skimage.data`` pictures mapped to
``d`` dimensions by a fixed random layer (:func:`embed`), once with fewer samples than
dimensions (rank-deficient covariances, as for 2048-dim Inception features of a few
thousand images) and once with more, and scikit-learn's digits (64 pixels, rank 61). On
each, one run computes the FID

    ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^{1/2} S2 S1^{1/2})^{1/2}``

with every method of :data:`METHODS` and records its value, its error relative to a
float64 reference and its time (median of interleaved repeats, compile time excluded).

The reference is computed in float64 from the float64 features without forming a
covariance: the cross term is the sum of the singular values of the centred features'
product (:func:`jaxsqrtm.testing.frechet_distance_reference`). The float64 eigh route on
the covariances (two eigendecompositions, :func:`eigh_route_trace`) is recorded next to
it: on rank-deficient covariances it is itself off (by about 1e-6 at d = 2048), as the
square roots of the round-off eigenvalues (up to ``sqrt(eps * largest)`` each) add up.
The float32 covariances are formed in float32 from the float32 features, as a float32
pipeline forms them; the covariance-based methods get them ready-made, the feature-based
one gets the features.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm.bench import timing

# The two feature sets of the image cases: patches of colour photographs against patches
# of grey-level pictures.
IMAGE_SETS = (("astronaut", "coffee", "chelsea", "rocket"), ("camera", "coins", "moon", "clock"))
PATCH, STRIDE = 8, 4
# A patch is normalised by its standard deviation plus this, so flat patches stay small.
CONTRAST_FLOOR = 0.05
BIAS_SCALE = 0.5
DIGITS_DIM = 64
# pytorch-fid's fallback when scipy.linalg.sqrtm returns non-finite values.
SCIPY_FALLBACK_OFFSET = 1e-6
SCIPY = "scipy"
SPEEDUP_TARGET = 10.0
HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Case:
    """One pair of feature sets: ``source`` ``"images"`` or ``"digits"``, ``dim`` features."""

    source: str
    dim: int
    samples: tuple[int, int]

    @property
    def name(self) -> str:
        """``"images_d2048_n1200"``: the case's key in the JSON."""
        n1, n2 = self.samples
        count = str(n1) if n1 == n2 else f"{n1}_{n2}"
        return f"{self.source}_d{self.dim}_n{count}"

    @property
    def label(self) -> str:
        """``"images, d = 2048, N = 1200 < d"``: the case in tables."""
        n1, n2 = self.samples
        count = str(n1) if n1 == n2 else f"{n1}/{n2}"
        relation = "<" if max(n1, n2) < self.dim else ">"
        return f"{self.source}, d = {self.dim}, N = {count} {relation} d"


@dataclasses.dataclass(frozen=True)
class Method:
    """One column: how ``build`` turns a case's inputs into a function and its arguments.

    Attributes:
        name: key in the JSON.
        label: name in tables.
        dtype: the dtype it computes in.
        data: ``"covariances"`` (means and covariances given) or ``"features"``.
        host: a NumPy/SciPy function, not compiled.
    """

    name: str
    label: str
    dtype: str
    data: str
    host: bool = False


METHODS = (
    Method(SCIPY, "scipy.linalg.sqrtm(S1 S2)", "float64", "covariances", True),
    Method("eigh_float32", "eigh float32", "float32", "covariances"),
    Method("eigh_float64", "eigh float64", "float64", "covariances"),
    Method("ott_bures", "ott costs.Bures", "float32", "covariances"),
    Method("jaxsqrtm_float32", "jaxsqrtm.frechet_distance", "float32", "covariances"),
    Method("jaxsqrtm_float64", "jaxsqrtm.frechet_distance", "float64", "covariances"),
    Method(
        "jaxsqrtm_features_float32",
        "jaxsqrtm.frechet_distance_from_features",
        "float32",
        "features",
    ),
)


def has_ott() -> bool:
    """Whether OTT-JAX is installed (its column is left out otherwise)."""
    return importlib.util.find_spec("ott") is not None


def available_methods() -> tuple[Method, ...]:
    """:data:`METHODS`, less OTT-JAX's where it is not installed."""
    return tuple(m for m in METHODS if m.name != "ott_bures" or has_ott())


def cases(dim: int, samples: tuple[int, ...]) -> list[Case]:
    """One image case per sample count (``N`` per set), then the digits."""
    found = [Case("images", dim, (n, n)) for n in samples]
    return [*found, Case("digits", DIGITS_DIM, digits_sizes())]


def digits_sizes() -> tuple[int, int]:
    """Images of digits 0-4 and of digits 5-9."""
    labels = digits_labels()
    return int(np.sum(labels < 5)), int(np.sum(labels >= 5))


def digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def embed(patches: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """``relu(x W + b)`` of contrast-normalised patches ``x``, ``W``, ``b`` fixed by ``seed``.

    Each patch is shifted to mean 0 and divided by its standard deviation (plus
    :data:`CONTRAST_FLOOR`); ``W`` has ``N(0, 1/p)`` entries for ``p`` pixels and ``b``
    ``N(0, BIAS_SCALE^2)``. The features' covariance spectrum falls off like a power law
    over six decades, and with ``N < d`` samples it has rank ``N - 1``, as that of an FID
    on fewer images than Inception's 2048 features has.
    """
    x = patches - patches.mean(axis=1, keepdims=True)
    x = x / (x.std(axis=1, keepdims=True) + CONTRAST_FLOOR)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((x.shape[1], dim)) / np.sqrt(x.shape[1])
    b = BIAS_SCALE * rng.standard_normal(dim)
    return np.maximum(x @ w + b, 0.0)


def features(case: Case, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The case's two float64 feature sets, ``(N1, d)`` and ``(N2, d)``."""
    if case.source == "digits":
        x, labels = testing.digits_features(), digits_labels()
        return x[labels < 5], x[labels >= 5]
    rng = np.random.default_rng(seed)
    result = []
    for names, n in zip(IMAGE_SETS, case.samples, strict=True):
        pool = np.concatenate([testing.image_patch_features(name, PATCH, STRIDE) for name in names])
        if n > len(pool):
            raise ValueError(f"{n} samples asked for, the images of {names} have {len(pool)}")
        result.append(pool[rng.choice(len(pool), n, replace=False)])
    return tuple(embed(p, case.dim, seed + 1) for p in result)


def statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample covariance (normalised by ``N - 1``) of ``(N, d)`` features.

    Computed in the features' dtype: in float32 as a float32 pipeline computes them.
    """
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / np.asarray(len(x) - 1, x.dtype)


def eigh_route_trace(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr (S1^{1/2} S2 S1^{1/2})^{1/2}`` by two float64 eigendecompositions.

    Negative eigenvalues (round-off of zero ones) are clamped to zero in both.
    """
    root = testing.sqrtm_reference(s1)
    inner = root @ s2 @ root
    lam = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.maximum(lam, 0)).sum())


def numerical_rank(eigenvalues: np.ndarray) -> int:
    """Eigenvalues above ``d * eps * largest``."""
    limit = len(eigenvalues) * np.finfo(np.float64).eps * eigenvalues.max()
    return int(np.sum(eigenvalues > limit))


def scipy_fid(mu1, s1, mu2, s2) -> float:
    """The FID as pytorch-fid computes it: ``scipy.linalg.sqrtm(S1 S2)``, its real part.

    Where the root is not finite, it is recomputed with
    :data:`SCIPY_FALLBACK_OFFSET` added to both diagonals.
    """
    import scipy.linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular products are the normal case here
        root = scipy.linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(root)):
            offset = SCIPY_FALLBACK_OFFSET * np.eye(len(s1))
            root = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def eigh_trace(s1, s2):
    """``tr (S1^{1/2} S2 S1^{1/2})^{1/2}`` by ``jnp.linalg.eigh``, negative eigenvalues clamped."""
    w, v = jnp.linalg.eigh(s1)
    root = jnp.matmul(v * jnp.sqrt(jnp.maximum(w, 0)), v.T, precision=HIGHEST)
    inner = jnp.matmul(root, jnp.matmul(s2, root, precision=HIGHEST), precision=HIGHEST)
    lam = jnp.linalg.eigvalsh((inner + inner.T) / 2)
    return jnp.sum(jnp.sqrt(jnp.maximum(lam, 0)))


def eigh_fid(mu1, s1, mu2, s2):
    """The FID with :func:`eigh_trace`."""
    diff = mu1 - mu2
    return jnp.dot(diff, diff) + jnp.trace(s1) + jnp.trace(s2) - 2 * eigh_trace(s1, s2)


def ott_fid(mu1, s1, mu2, s2):
    """OTT-JAX's ``costs.Bures`` on the raveled Gaussians: the FID, with its defaults."""
    from ott.geometry import costs

    cost = costs.Bures(dimension=s1.shape[-1])
    return cost(jnp.concatenate([mu1, s1.ravel()]), jnp.concatenate([mu2, s2.ravel()]))


def jaxsqrtm_fid(mu1, s1, mu2, s2):
    return jaxsqrtm.frechet_distance(mu1, s1, mu2, s2)


def jaxsqrtm_features_fid(x1, x2):
    return jaxsqrtm.frechet_distance_from_features(x1, x2)


FUNCTIONS: dict[str, Callable] = {
    SCIPY: scipy_fid,
    "eigh_float32": eigh_fid,
    "eigh_float64": eigh_fid,
    "ott_bures": ott_fid,
    "jaxsqrtm_float32": jaxsqrtm_fid,
    "jaxsqrtm_float64": jaxsqrtm_fid,
    "jaxsqrtm_features_float32": jaxsqrtm_features_fid,
}


def x64(enabled: bool):
    """A context with ``jax_enable_x64`` set to ``enabled``, for the float64 columns."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(enabled)
    from jax.experimental import disable_x64, enable_x64

    return enable_x64() if enabled else disable_x64()


def prepare(method: Method, data: dict) -> timing.Timed:
    """``method`` compiled (or wrapped, on the host) for its inputs among ``data``.

    ``data`` maps ``(dtype, "covariances" | "features")`` to NumPy arguments. float64
    columns are traced and compiled with ``jax_enable_x64``; the executables keep their
    float64 arguments when called outside.
    """
    args = data[method.dtype, method.data]
    fn = FUNCTIONS[method.name]
    if method.host:
        return timing.Timed(fn, args, compile_s=None)
    with x64(method.dtype == "float64"):
        device_args = tuple(jnp.asarray(a, method.dtype) for a in args)
        return timing.compile_timed(fn, device_args)


def warm_up(item: timing.Timed, calls: int, min_sample_s: float) -> None:
    """``calls`` untimed calls (the last output kept); calls per sample only where they are fast.

    A call as long as a sample (the float64 ones at d = 2048 take seconds, SciPy's tens of
    seconds) gets one call per sample without timing it again.
    """
    took = 0.0
    for _ in range(max(calls, 1)):
        start = time.perf_counter()
        item.output = jax.block_until_ready(item.compiled(*item.args))
        took = time.perf_counter() - start
    if took < min_sample_s:
        timing.warm_up(item, 0, min_sample_s)


def case_data(case: Case, seed: int) -> tuple[dict, dict]:
    """The inputs of every column and the case's float64 facts (references, traces, ranks)."""
    x1, x2 = features(case, seed)
    mu1, s1 = statistics(x1)
    mu2, s2 = statistics(x2)
    diff = mu1 - mu2
    reference = testing.frechet_distance_reference(x1, x2)
    eigh_route = float(diff @ diff + np.trace(s1) + np.trace(s2)) - 2 * eigh_route_trace(s1, s2)
    f1, f2 = x1.astype(np.float32), x2.astype(np.float32)
    data = {
        ("float64", "covariances"): (mu1, s1, mu2, s2),
        ("float32", "covariances"): (*statistics(f1), *statistics(f2)),
        ("float32", "features"): (f1, f2),
    }
    eigenvalues = [np.linalg.eigvalsh(s) for s in (s1, s2)]
    facts = {
        "name": case.name,
        "label": case.label,
        "source": case.source,
        "dim": case.dim,
        "samples": list(case.samples),
        "reference": reference,
        "reference_eigh": eigh_route,
        "reference_agreement": abs(eigh_route - reference) / abs(reference),
        "mean_term": float(diff @ diff),
        "traces": [float(np.trace(s1)), float(np.trace(s2))],
        "rank": [numerical_rank(e) for e in eigenvalues],
    }
    return data, facts


def steps(settings, methods: tuple[Method, ...] | None = None) -> int:
    """Progress steps: per case and column, a compilation and ``repeats`` samples."""
    methods = available_methods() if methods is None else methods
    count = len(cases(settings.distance_dim, settings.distance_samples))
    return count * len(methods) * (1 + settings.repeats)


def run(settings, bar) -> dict:
    """Every case of the workload, every column timed and checked.

    Args:
        settings: :class:`jaxsqrtm.bench.workloads.Settings` (``distance_dim``,
            ``distance_samples``, the timing knobs and ``seed``).
        bar: a progress bar, advanced once per compilation and per sample.

    Returns:
        ``{"cases": [...], "rows": [...], "summary": {...}}``: the cases' float64 facts,
        one row per case and column, and the speed-ups over SciPy.
    """
    methods = available_methods()
    facts, rows = [], []
    for case in cases(settings.distance_dim, settings.distance_samples):
        bar.set_description(f"distances {case.name}")
        data, case_facts = case_data(case, settings.seed)
        timed = {}
        for method in methods:
            timed[method] = prepare(method, data)
            bar.update(1)
        for item in timed.values():
            warm_up(item, settings.warmup, settings.min_sample_s)
        timing.measure_with_progress(list(timed.values()), settings, bar)
        facts.append(case_facts)
        rows += [make_row(case_facts, method, item) for method, item in timed.items()]
    add_speedups(rows)
    return {"cases": facts, "rows": rows, "summary": summary(rows, facts)}


def make_row(facts: dict, method: Method, item: timing.Timed) -> dict:
    """One case and column: the value, its relative error and the time statistics."""
    value = float(np.asarray(item.output, np.float64))
    reference = facts["reference"]
    return {
        "case": facts["name"],
        "method": method.name,
        "label": method.label,
        "dtype": method.dtype,
        "data": method.data,
        "value": value,
        "error": abs(value - reference) / abs(reference),
        **timing.statistics(item),
    }


def add_speedups(rows: list[dict]) -> None:
    """``speedup``: SciPy's median over the row's median, in the same case."""
    scipy_s = {r["case"]: r["median_s"] for r in rows if r["method"] == SCIPY}
    for row in rows:
        baseline = scipy_s.get(row["case"])
        row["speedup"] = None if baseline is None else baseline / row["median_s"]


def summary(rows: list[dict], facts: list[dict]) -> dict:
    """The speed target: jaxsqrtm's FID at the largest image dimension against SciPy's.

    ``speedup``: one entry per image case of the largest dimension and jaxsqrtm column,
    with its speed-up over SciPy and whether it reaches :data:`SPEEDUP_TARGET` (``met``).
    """
    images = [f for f in facts if f["source"] == "images"]
    dim = max((f["dim"] for f in images), default=None)
    names = {f["name"] for f in images if f["dim"] == dim}
    speedup = [
        {
            "case": row["case"],
            "method": row["method"],
            "speedup": row["speedup"],
            "met": bool(row["speedup"] >= SPEEDUP_TARGET),
        }
        for row in rows
        if row["case"] in names and row["method"].startswith("jaxsqrtm") and row["speedup"]
    ]
    return {"speedup_target": SPEEDUP_TARGET, "dim": dim, "speedup": speedup}
