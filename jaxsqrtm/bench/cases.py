"""The functions the benchmark times, and their matrix-product counts.

Each case is a pure function of arrays, compiled on its own: the forward pass
``a -> root``, the forward and backward pass ``(a, g) -> (root, dl/da)`` with a fixed
cotangent ``g`` (what a training step computes), and a chain of products that measures
the cost of one batched ``n x n`` product for the roofline column.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

import jaxsqrtm

STOCK = "jax.scipy.linalg.sqrtm"
FUNCTIONS = ("sqrtm", "inv_sqrtm")
MODES = ("forward", "forward_backward")
# One product costs (time of the long chain - time of the short one) / the difference in
# length: the call's fixed overhead cancels. The long chain does about CHAIN_WORK
# multiply-adds, so that its products, not the overhead, dominate it.
CHAIN_WORK = 2**28
CHAIN_EXTRA_RANGE = (16, 256)


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """One timed function: a root, a method, a mode and an input dtype."""

    function: str
    method: str
    mode: str
    dtype: str


def available_methods(requested: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``jaxsqrtm.METHODS`` plus the stock baseline where it runs (CPU), or ``requested``."""
    if requested:
        return tuple(requested)
    stock = (STOCK,) if jax.default_backend() == "cpu" else ()
    return (*jaxsqrtm.METHODS, *stock)


def case_specs(functions, methods, dtypes) -> list[CaseSpec]:
    """Every supported combination; the stock baseline has no inverse and no gradient."""
    specs = []
    for dtype in dtypes:
        for function in functions:
            for method in methods:
                if method == STOCK and function != "sqrtm":
                    continue
                for mode in MODES:
                    if method == STOCK and mode != "forward":
                        continue
                    specs.append(CaseSpec(function, method, mode, dtype))
    return specs


def compute_dtype(dtype):
    """The dtype the library computes in: half precision is computed in float32."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def stock_sqrtm(a):
    """``jax.scipy.linalg.sqrtm`` (Schur, complex, CPU only) mapped over a batch, real part."""
    n = a.shape[-1]
    x = a.astype(compute_dtype(a.dtype)).reshape(-1, n, n)
    root = jax.vmap(jax.scipy.linalg.sqrtm)(x).real
    return root.reshape(a.shape).astype(a.dtype)


def root_function(function: str, method: str):
    """``a -> a^(+-1/2)`` for one library method or the stock baseline."""
    if method == STOCK:
        return stock_sqrtm
    root = jaxsqrtm.sqrtm if function == "sqrtm" else jaxsqrtm.inv_sqrtm
    return functools.partial(root, method=method)


def value_and_gradient(root):
    """``(a, g) -> (root(a), g^T d root / d a)``: a forward and a backward pass."""

    def run(a, g):
        value, pullback = jax.vjp(root, a)
        return value, pullback(g)[0]

    return run


def case_function(spec: CaseSpec):
    """The function timed for ``spec``; it takes ``(a,)`` forward, ``(a, g)`` otherwise."""
    root = root_function(spec.function, spec.method)
    return root if spec.mode == "forward" else value_and_gradient(root)


def chain_lengths(batch: int, n: int) -> tuple[int, int]:
    """Products in the short and the long chain that time one ``batch x n x n`` product."""
    low, high = CHAIN_EXTRA_RANGE
    return 1, 1 + min(max(CHAIN_WORK // max(batch * n**3, 1), low), high)


def product_chain(x, y, *, length: int):
    """``x y^length``: ``length`` dependent batched products."""
    for _ in range(length):
        x = jnp.matmul(x, y, precision=lax.Precision.HIGHEST)
    return x


def matmuls(spec: CaseSpec) -> int | None:
    """Products per matrix that ``spec`` performs, ``None`` when not a fixed count."""
    if spec.method == STOCK:
        return None
    return jaxsqrtm.matmul_count(
        spec.method, inverse=spec.function == "inv_sqrtm", backward=spec.mode != "forward"
    )
