"""An accelerator cost model of matrix products by precision: an estimate, not a timing.

A product of two ``n x n`` matrices is ``2 n^3`` floating-point operations; at a
device's dense throughput for its precision kind it takes ``2 n^3 / throughput``
seconds. Summed over the products a call performs per precision kind
(:func:`jaxsqrtm.matmul_count` with ``by_precision=True``), that is the time of a call
whose products run at peak and whose other work (elementwise updates, matrix-vector
products, reductions, launches) is free: it ignores memory traffic, small-matrix
inefficiency and overlap, so it is a bound on what the precision kinds can buy, and a
ratio of two such times is the speed-up to expect where products dominate.

Kinds (:data:`jaxsqrtm._matrix.PRODUCT_KINDS`): ``"float32"`` (``precision="highest"``),
``"tf32"`` (``"high"`` on NVIDIA GPUs), ``"bfloat16"`` (bfloat16 operands, float32
accumulation) and ``"default"`` (TF32 on NVIDIA GPUs).
"""

from __future__ import annotations

from collections.abc import Mapping

H100 = {"float32": 67e12, "tf32": 495e12, "default": 495e12, "bfloat16": 990e12}
"""Dense FLOP/s of an NVIDIA H100 SXM by product kind: FP32 (SIMT), TF32 and BF16 tensor
cores (the data sheet's figures without sparsity)."""


def product_seconds(
    counts: Mapping[str, float], *, n: int, batch: int = 1, throughput=H100
) -> float:
    """Seconds that ``counts`` products per matrix (``{kind: count}``) of ``batch``
    ``n x n`` matrices take at the ``throughput`` (FLOP/s by kind) of the device."""
    flops = 2.0 * n**3 * batch
    total = 0.0
    for kind, count in counts.items():
        if kind not in throughput:
            raise ValueError(f"no throughput for product kind {kind!r}; known: {tuple(throughput)}")
        total += float(count) * flops / throughput[kind]
    return total


def speedup(baseline: Mapping[str, float], counts: Mapping[str, float], *, throughput=H100):
    """The model's speed-up of ``counts`` over ``baseline`` (both ``{kind: count}`` per
    matrix of the same shape): the ratio of their :func:`product_seconds`."""
    return product_seconds(baseline, n=1, throughput=throughput) / product_seconds(
        counts, n=1, throughput=throughput
    )


def share(counts: Mapping[str, float], kind: str = "bfloat16") -> float:
    """The fraction of the products in ``counts`` that are of ``kind``."""
    total = sum(float(c) for c in counts.values())
    return float(counts.get(kind, 0)) / total if total else 0.0


def break_even_share(throughput=H100, *, low: str = "bfloat16", high: str = "float32") -> float:
    """The ``low`` share of an unchanged product count at which the model's speed-up over
    all-``high`` products reaches 3: ``(1 - 1/3) / (1 - high/low throughput)``, 0.715 for
    bfloat16 against float32 on an H100. A schedule with more products needs more."""
    ratio = throughput[high] / throughput[low]
    return (1 - 1 / 3) / (1 - ratio)
