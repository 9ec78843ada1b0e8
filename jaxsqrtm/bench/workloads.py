"""What the benchmark measures: settings, workload shapes and their input matrices.

A workload is one ``batch x n x n`` shape with a purpose (a point of the batch sweep, of
the size sweep, a target shape or an application). Workloads with the same shape and the
same input matrices are merged into one :class:`Group`, timed once and tagged with every
workload it serves. The ``distances`` workload (Fréchet distances of feature sets,
:mod:`jaxsqrtm.bench.distances`) has no such shape and plans its own cases, as does
``powers`` (inverse ``p``-th roots of statistics, :mod:`jaxsqrtm.bench.powers`) and
``polar`` (polar factors of stacked rectangular matrices, :mod:`jaxsqrtm.bench.polar`)
and ``precision`` (the accurate roots at each product precision,
:mod:`jaxsqrtm.bench.precision`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxsqrtm import testing

WORKLOAD_KINDS = (
    "batch",
    "size",
    "target",
    "application",
    "distances",
    "powers",
    "polar",
    "precision",
)
DTYPES = ("float32", "bfloat16", "float16", "float64")

# (name, batch, n, matrix source); the covariance-pooling batch comes from the settings.
APPLICATIONS = (
    ("decorrelated_bn", 1, 64, "digits"),
    ("so_vit_head", 64, 48, "synthetic"),
    ("covariance_pooling", None, 256, "synthetic"),
    ("style_transfer", 4, 512, "synthetic"),
)
# The paper's CPU comparison of MPA against eigh/SVD.
TARGET_SHAPES = ((256, 32), (64, 64))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of one benchmark run; recorded in the JSON output.

    Attributes:
        batches: batch sizes of the batch sweep.
        batch_sweep_n: matrix size of the batch sweep.
        sizes: matrix sizes of the size sweep.
        size_sweep_batch: batch size of the size sweep.
        pooling_batch: batch of the covariance-pooling application (``batch x 256 x 256``).
        workloads: which of :data:`WORKLOAD_KINDS` to run.
        methods: ``jaxsqrtm`` methods plus, optionally, the stock JAX baseline.
        functions: ``"sqrtm"`` and/or ``"inv_sqrtm"``.
        dtypes: input dtypes of the sweeps and target shapes.
        application_dtypes: input dtypes of the application shapes.
        repeats: timed calls per case, interleaved across the cases of one shape.
        warmup: untimed calls per case after compilation.
        min_sample_s: a sample repeats a fast call until it lasts this long.
        min_repeats: samples every case gets, however slow.
        max_case_s: stop repeating a case once it has spent this long (and has
            ``min_repeats`` samples).
        kappa: condition number of the synthetic SPD matrices.
        spectrum: eigenvalue distribution of the synthetic matrices
            (:data:`jaxsqrtm.testing.SPECTRA`).
        digits_ridge: ridge, relative to the largest eigenvalue, added to the digits
            pixel covariance (which is singular) of the decorrelated-BN application.
        distance_dim: feature dimension of the image cases of the ``distances`` workload.
        distance_samples: samples per feature set, one image case each (fewer and more
            than ``distance_dim``).
        power_batch: batch ``B`` of the ``powers`` workload's ``(B, n, n)`` statistics.
        power_n: their size ``n`` (the documented target size is 1024).
        power_kappa: their condition number.
        power_exponents: the ``p`` of the roots ``A^(-1/p)`` it times.
        polar_layers: ``L`` of the ``polar`` workload's ``(L, m, n)`` stacks.
        polar_shapes: their ``(m, n)``.
        polar_bf16_count: gradient-like matrices of its bfloat16 measurement.
        precisions: product precisions of the ``precision`` workload (``--precision``).
        precision_shapes: its ``(batch, n)`` shapes.
        seed: seed of the matrices and cotangents (and of the features of ``distances``).
    """

    batches: tuple[int, ...] = (1, 4, 16, 64, 256)
    batch_sweep_n: int = 64
    sizes: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    size_sweep_batch: int = 1
    pooling_batch: int = 16
    workloads: tuple[str, ...] = WORKLOAD_KINDS
    methods: tuple[str, ...] = ()
    functions: tuple[str, ...] = ("sqrtm", "inv_sqrtm")
    dtypes: tuple[str, ...] = ("float32",)
    application_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    repeats: int = 9
    warmup: int = 1
    min_sample_s: float = 5e-3
    min_repeats: int = 3
    max_case_s: float = 2.0
    kappa: float = 100.0
    spectrum: str = "marchenko_pastur"
    digits_ridge: float = 1e-3
    distance_dim: int = 2048
    distance_samples: tuple[int, ...] = (1200, 4096)
    power_batch: int = 4
    power_n: int = 256
    power_kappa: float = 1e4
    power_exponents: tuple[int, ...] = (2, 3, 4, 6, 8)
    polar_layers: int = 4
    polar_shapes: tuple[tuple[int, int], ...] = ((512, 2048), (1024, 1024))
    polar_bf16_count: int = 10_000
    precisions: tuple[str, ...] = ("highest", "mixed")
    precision_shapes: tuple[tuple[int, int], ...] = ((64, 64), (1, 1024))
    seed: int = 0


def quick_settings(**overrides) -> Settings:
    """A subset of the full run that finishes in under two minutes on a 2-core CPU.

    Three shapes (1 x 64 x 64, 64 x 64 x 64 and 256 x 32 x 32), compiling each case once,
    dominate its time. The ``distances`` workload, when selected, runs at ``d = 256``,
    ``powers`` at ``2 x 64 x 64``, ``polar`` at ``2 x 64 x 256`` and ``2 x 128 x 128`` with 300
    matrices in its bfloat16 measurement, ``precision`` at ``64 x 64 x 64`` and
    ``1 x 256 x 256``.
    """
    quick = {
        "batches": (1, 64),
        "sizes": (64,),
        "workloads": ("batch", "size", "target"),
        "repeats": 3,
        "min_repeats": 1,
        "max_case_s": 0.3,
        "distance_dim": 256,
        "distance_samples": (150, 512),
        "power_batch": 2,
        "power_n": 64,
        "polar_layers": 2,
        "polar_shapes": ((64, 256), (128, 128)),
        "polar_bf16_count": 300,
        "precision_shapes": ((64, 64), (1, 256)),
    }
    return Settings(**{**quick, **overrides})


@dataclasses.dataclass(frozen=True)
class Workload:
    """One shape measured for one purpose; ``label`` names it in tables and plots."""

    kind: str
    label: str
    batch: int
    n: int
    source: str = "synthetic"
    dtypes: tuple[str, ...] = ("float32",)


@dataclasses.dataclass(frozen=True)
class Group:
    """Workloads sharing one shape and input: timed together, interleaved."""

    batch: int
    n: int
    source: str
    dtypes: tuple[str, ...]
    workloads: tuple[Workload, ...]


def selected_workloads(settings: Settings) -> list[Workload]:
    """The workloads selected by ``settings``, in the order they are run."""
    selected = []
    if "batch" in settings.workloads:
        n = settings.batch_sweep_n
        for b in settings.batches:
            selected.append(Workload("batch", f"{b}x{n}x{n}", b, n, dtypes=settings.dtypes))
    if "size" in settings.workloads:
        b = settings.size_sweep_batch
        for n in settings.sizes:
            selected.append(Workload("size", f"{b}x{n}x{n}", b, n, dtypes=settings.dtypes))
    if "target" in settings.workloads:
        for b, n in TARGET_SHAPES:
            selected.append(Workload("target", f"{b}x{n}x{n}", b, n, dtypes=settings.dtypes))
    if "application" in settings.workloads:
        for name, batch, n, source in APPLICATIONS:
            b = settings.pooling_batch if batch is None else batch
            selected.append(
                Workload("application", name, b, n, source, settings.application_dtypes)
            )
    return selected


def plan_groups(settings: Settings) -> list[Group]:
    """:func:`selected_workloads` merged by shape and matrix source, first appearance first."""
    merged: dict[tuple[int, int, str], list[Workload]] = {}
    for workload in selected_workloads(settings):
        merged.setdefault((workload.batch, workload.n, workload.source), []).append(workload)
    result = []
    for (batch, n, source), members in merged.items():
        dtypes = tuple(dict.fromkeys(d for w in members for d in w.dtypes))
        result.append(Group(batch, n, source, dtypes, tuple(members)))
    return result


def input_matrices(group: Group, settings: Settings) -> np.ndarray:
    """The group's ``(batch, n, n)`` float64 SPD inputs."""
    if group.source == "digits":
        cov = testing.digits_covariance()
        if cov.shape[-1] != group.n:
            raise ValueError(f"the digits covariance is {cov.shape}, not {group.n}x{group.n}")
        ridge = settings.digits_ridge * np.linalg.eigvalsh(cov)[-1]
        cov = cov + ridge * np.eye(group.n)
        return np.broadcast_to(cov, (group.batch, group.n, group.n)).copy()
    return testing.spd_matrix(
        group.n,
        settings.kappa,
        kind=settings.spectrum,
        batch=(group.batch,),
        seed=settings.seed,
    )


def cotangent(group: Group, settings: Settings) -> np.ndarray:
    """A fixed standard-normal cotangent ``dl/dA^(+-1/2)`` of the group's shape, float64."""
    rng = np.random.default_rng(settings.seed + 1)
    return rng.standard_normal((group.batch, group.n, group.n))


def product_operand(group: Group, settings: Settings) -> np.ndarray:
    """An orthogonal right factor for the product chain: no growth, no denormals."""
    q = testing.random_orthogonal(group.n, np.random.default_rng(settings.seed + 2))
    return np.broadcast_to(q, (group.batch, group.n, group.n))
