"""The method table's entry: what a matrix-root method must say about itself.

A method is one :class:`Method` value, defined in its own module under
:mod:`jaxsqrtm._methods` and listed in :data:`jaxsqrtm._methods.TABLE`. The entry says
everything the public functions need, so that they never branch on a method's name:

* ``knobs``: its keyword arguments, each with a default and a trace-time check
  (:class:`Knob`). :meth:`Method.configure` validates a call's keywords against them
  and builds the hashable :class:`Config` that the jitted code is specialised on.
* ``root``: ``(a, config) -> Root``, the function of the symmetric, compute-dtype input
  ``a`` (``(..., n, n)``) that returns the root, the per-matrix scale and the iteration
  count. It carries its own differentiation rule (``jax.custom_jvp`` for the methods
  whose derivative is not autodiff of their forward), and it must support every JAX
  transform: ``jvp``, ``vjp``/``grad``, ``vmap``, ``jit``, ``shard_map``. The
  ``jax.custom_jvp`` rules here are linear in the tangent, so JAX derives reverse mode
  by transposing them; the Lyapunov solves inside them go through
  ``lax.custom_linear_solve`` (:func:`jaxsqrtm._lyapunov.lyapunov_inverse`), which
  JAX can transpose, differentiate again and batch.
* ``cost``: ``(config, backward) -> int | None``, the ``n x n`` matrix products
  of one forward (plus backward) call per matrix, ``None`` where the count depends on
  the data; :func:`jaxsqrtm.matmul_count` returns it.
* ``summary`` and ``derivative``: one line each, for the documentation.

To add a method: write a module with its forward (pure functions of the normalised matrix,
reusing :mod:`jaxsqrtm._matrix`, :mod:`jaxsqrtm._sign` and :mod:`jaxsqrtm._lyapunov`), a
``root`` with its rule, a ``cost``, and a ``METHOD = Method(...)``; add it to the table.
The tests in ``tests/test_transforms.py`` run every transform on every entry of the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from jax import lax

from jaxsqrtm import _validation
from jaxsqrtm._matrix import product_kind


class Root(NamedTuple):
    """What a method's ``root`` returns; every field has the batch shape ``(...)`` of ``a``
    except ``out``, which has the shape of ``a``."""

    out: jax.Array  # A^(1/2) or A^(-1/2)
    scale: jax.Array  # the per-matrix scale c of A_hat = A / c
    iterations: jax.Array  # int32 iterations taken, 0 for closed forms
    # Optional, for entries whose product count depends on the data: int32 (...,) products
    # per precision kind ({"forward": {kind: ...}, "backward": {kind: ...}}, kinds of
    # jaxsqrtm._matrix.PRODUCT_KINDS); None: the entry's static ``cost``.
    products: dict | None = None
    # precision="mixed" only: int32 (...,) iterations with bfloat16 products and refinement
    # steps; None otherwise.
    low_precision_iterations: jax.Array | None = None
    refinements: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Knob:
    """A keyword argument of a method: its name, default and trace-time check.

    ``check(func, name, value)`` returns the validated value or raises
    ``TypeError``/``ValueError`` naming ``func`` and ``name``; it is never given ``None``
    (``None`` in a call means the default).
    """

    name: str
    default: Any
    check: Callable[[str, str, Any], Any]


@dataclasses.dataclass(frozen=True)
class Config:
    """The static part of one call: hashable, so equal knobs share one compiled program.

    Knob values are read as attributes (``config.degree``).
    """

    method: str
    inverse: bool
    precision: lax.Precision
    knobs: tuple[tuple[str, Any], ...] = ()

    def __getattr__(self, name):
        for key, value in self.knobs:
            if key == name:
                return value
        raise AttributeError(f"method {self.method!r} has no knob {name!r}")


@dataclasses.dataclass(frozen=True)
class Method:
    """One entry of the method table (see the module docstring)."""

    name: str
    summary: str
    derivative: str
    knobs: tuple[Knob, ...]
    root: Callable[[jax.Array, Config], Root]
    cost: Callable[[Config, bool], int | None]
    # Whether ``root`` implements precision="mixed" (config.precision is then the string
    # jaxsqrtm._validation.MIXED); the other entries reject it by name.
    mixed: bool = False
    mixed_note: str = "it has no convergence measurement to switch precision on"

    def static_products(self, config: Config, zeros) -> dict:
        """A call's products per matrix and precision kind from a static ``cost``:
        ``{"forward": {kind: zeros + count}, "backward": {...}}`` (``zeros``: int32
        ``(...,)``); empty mappings where ``cost`` is ``None``."""
        forward = self.cost(config, False)
        if forward is None:
            return {"forward": {}, "backward": {}}
        backward = self.cost(config, True) - forward
        kind = product_kind(config.precision)
        return {"forward": {kind: zeros + forward}, "backward": {kind: zeros + backward}}

    def configure(self, func: str, *, inverse: bool, precision, given: dict) -> Config:
        """Validate a call's keywords against the knobs; ``None`` means "the default".

        A knob that this method does not have is an error unless it is ``None``, so that
        a wrapper can pass every keyword through unchanged.
        """
        names = tuple(knob.name for knob in self.knobs)
        for name, value in given.items():
            if name not in names and value is not None:
                raise ValueError(
                    f"{func}: {name}={value!r} does not apply to method={self.name!r}; "
                    f"its knobs are {names or 'none'}"
                )
        resolved = []
        for knob in self.knobs:
            value = given.get(knob.name)
            if value is None:
                value = knob.default
            if value is not None:
                value = knob.check(func, knob.name, value)
            resolved.append((knob.name, value))
        precision = _validation.check_precision(func, precision, allow_mixed=True)
        if precision == _validation.MIXED and not self.mixed:
            raise ValueError(
                f"{func}: precision='mixed' does not apply to method={self.name!r}: "
                f"{self.mixed_note}"
            )
        return Config(
            method=self.name,
            inverse=inverse,
            precision=precision,
            knobs=tuple(resolved),
        )


def count_knob(name: str, default: int, *, minimum: int = 1) -> Knob:
    """A static integer knob, at least ``minimum``."""

    def check(func, knob, value):
        return _validation.check_count(func, knob, value, minimum=minimum)

    return Knob(name, default, check)


def choice_knob(name: str, default: str, choices: tuple[str, ...]) -> Knob:
    """A static string knob out of ``choices``."""

    def check(func, knob, value):
        return _validation.check_choice(func, knob, value, choices)

    return Knob(name, default, check)


def summed_products(products: dict, *, backward: bool) -> dict:
    """Products per precision kind of ``products`` (``{"forward": {kind: count},
    "backward": {...}}``, a call's :attr:`jaxsqrtm.RootInfo.products` or alike): the
    forward's, plus the backward's with ``backward``."""
    parts = ("forward", "backward") if backward else ("forward",)
    total = {}
    for part in parts:
        for kind, value in products[part].items():
            total[kind] = total.get(kind, 0) + value
    return total
