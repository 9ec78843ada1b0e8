"""Muon for optax, orthogonalising with :func:`jaxsqrtm.polar`.

Muon (Jordan et al., 2024) updates each weight matrix ``W`` with the orthogonal polar
factor of its Nesterov momentum ``M``::

    msign(M) = M (M^T M)^(-1/2) = U V^T        (M = U S V^T, the thin SVD)

scaled by a factor of the matrix's shape; every other parameter (biases, norms, scalars)
is updated by AdamW. :func:`muon` and :func:`scale_by_muon` mirror
:func:`optax.contrib.muon` and :func:`optax.contrib.scale_by_muon` (same momentum, bias
correction, shape scaling, weight decay, AdamW branch and
:class:`optax.contrib.MuonDimensionNumbers`), with the orthogonaliser as arguments that
go to :func:`jaxsqrtm.polar`. Per ``m x n`` matrix (``k = min(m, n)``; a product costs
``max(m, n) k^2`` or ``k^3`` multiply-adds):

* ``polar_method="quintic"`` (the default): optax's five quintic Newton–Schulz steps
  ``(3.4445, -4.7750, 2.0315)`` after dividing by ``||M||_F + 1e-8``, 15 products. The
  updates equal optax's to float32 round-off. Singular values above about
  ``1.5e-3 ||M||_F`` end in ``[0.68, 1.20]``, not at 1; smaller ones are lifted only
  part of the way (``1e-4 ||M||_F`` to 0.05).
* ``"polar_express"``: the Polar Express schedule (Amsel, Persson, Musco & Gower, 2025),
  8 steps, 24 products; ``||U^T U - I||_2 <= 1e-2`` for ``sigma_min / sigma_max >= 1e-3``.
* ``"auto"``: the accurate mode, iterated per matrix to float32 round-off (about 7 steps
  of 2 products at condition number ``1e2``, 13 at ``1e4``). A rank-deficient momentum
  (a classifier's gradient, whose softmax residuals sum to 0 in every row; zero rows from
  inputs or ReLU units that are always 0) cannot converge: it takes ``max_iters`` steps
  and then an SVD, 0 on the null space.
* ``"cubic"`` (26 steps, 52 products), ``"svd"``, and ``"polynomial"`` with your own
  table ``coefficients=((a, b, c), ...)``.

``precision="bfloat16"`` (fixed schedules only) runs the products with bfloat16 operands
and float32 accumulation, as accelerators run Muon, the last step in float32 products.
See :func:`jaxsqrtm.polar` for the accuracy of each choice.

Sharding: on a mesh with :class:`jax.sharding.AxisType.Explicit` axes, a matrix sharded
along a reduction or output axis is gathered along those axes for the orthogonalisation,
and a stack sharded along its first batch axis is orthogonalised where it lies (under
:func:`jax.shard_map`, no communication); the update comes back with the parameter's
sharding, and the optimizer state keeps the parameters' sharding.

Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jaxsqrtm.optim import muon
    >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    >>> optimizer = muon(0.02, polar_method="polar_express")
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update(params, state, params)
    >>> jax.tree.map(jnp.shape, updates)
    {'b': (3,), 'w': (4, 3)}
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

import jaxsqrtm

__all__ = ["MuonDimensionNumbers", "MuonState", "muon", "orthogonalize", "scale_by_muon"]

WeightDimensionNumbers = Any  # MuonDimensionNumbers | pytree of them and None | callable


class MuonState(NamedTuple):
    """State of :func:`scale_by_muon`.

    Attributes:
        count: ``()`` int32, the number of updates so far.
        mu: the momentum, a pytree like the updates (dtype ``mu_dtype`` if given).
    """

    count: jax.Array
    mu: optax.Updates


def _is_spec_leaf(x) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers)


def _check_axes(func: str, value, name: str) -> None:
    axes = (value,) if isinstance(value, int) else value
    if (
        isinstance(value, bool)
        or not isinstance(axes, Sequence)
        or not axes
        or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
    ):
        raise TypeError(
            f"{func}: MuonDimensionNumbers.{name} must be an int or a non-empty sequence "
            f"of ints, got {value!r}"
        )


def _check_dimension_numbers(func: str, name: str, spec) -> None:
    """Construction-time check of a dimension-numbers argument (its leaves' types)."""
    if spec is None or (callable(spec) and not isinstance(spec, MuonDimensionNumbers)):
        return
    for leaf in jax.tree.leaves(spec, is_leaf=_is_spec_leaf):
        if leaf is None:
            continue
        if not isinstance(leaf, MuonDimensionNumbers):
            raise TypeError(
                f"{func}: {name} must be a MuonDimensionNumbers, a pytree of them and None, "
                f"or a callable returning one, got a leaf {leaf!r}"
            )
        _check_axes(func, leaf.reduction_axis, "reduction_axis")
        _check_axes(func, leaf.output_axis, "output_axis")


def _matrix_axes(func: str, shape, spec: MuonDimensionNumbers):
    """``(batch, reduction, output)`` axes of an array of ``shape``, validated."""
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(
            f"{func}: a parameter orthogonalised as a matrix must have rank >= 2, got shape "
            f"{tuple(shape)} (give it None dimension numbers to leave it to AdamW)"
        )
    axes = []
    for value in (spec.reduction_axis, spec.output_axis):
        value = (value,) if isinstance(value, int) else tuple(value)
        if any(not -ndim <= a < ndim for a in value):
            raise ValueError(
                f"{func}: dimension numbers {spec} are out of range for shape {tuple(shape)}"
            )
        axes.append(tuple(a % ndim for a in value))
    reduction, output = axes
    if len(set(reduction + output)) != len(reduction) + len(output):
        raise ValueError(
            f"{func}: reduction axes {reduction} and output axes {output} must be distinct, "
            f"for shape {tuple(shape)}"
        )
    batch = tuple(a for a in range(ndim) if a not in reduction + output)
    return batch, reduction, output


def _map_matrices(fn, updates, spec, func: str):
    """``fn(leaf, dimension_numbers)`` on every leaf that has dimension numbers.

    ``spec`` is ``None`` (every leaf a 2-D matrix), a prefix of the updates' structure
    (leaves under a ``None`` are returned as they are) or a callable returning one.
    """
    if spec is None:

        def matrix(x):
            if jnp.ndim(x) != 2:
                raise ValueError(
                    f"{func}: without dimension numbers every leaf must be a 2-D matrix, got "
                    f"shape {jnp.shape(x)}; give MuonDimensionNumbers for stacked or "
                    "convolution weights"
                )
            return fn(x, MuonDimensionNumbers())

        return jax.tree.map(matrix, updates)
    if callable(spec) and not isinstance(spec, MuonDimensionNumbers):
        spec = spec(updates)

    def subtree(dimension_numbers, sub):
        if dimension_numbers is None:
            return sub
        return jax.tree.map(lambda x: fn(x, dimension_numbers), sub)

    return jax.tree.map(subtree, spec, updates, is_leaf=_is_spec_leaf)


def _explicit_spec(x):
    """``x``'s partition spec as a list (one entry an axis) on a mesh with Explicit axes;
    ``None`` elsewhere."""
    sharding = jax.typeof(x).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or jax.sharding.AxisType.Explicit not in getattr(mesh, "axis_types", ()):
        return None
    spec = list(sharding.spec)
    return spec + [None] * (x.ndim - len(spec))


def _orthogonalize_leaf(x, dimension_numbers, *, func: str, polar_options):
    """The polar factor of each matrix of ``x`` along its reduction and output axes."""
    batch, reduction, output = _matrix_axes(func, x.shape, dimension_numbers)
    polar = functools.partial(jaxsqrtm.polar, **polar_options)
    spec = _explicit_spec(x)
    if spec is not None:
        # A product over a sharded axis has no defined sharding on Explicit axes: gather
        # every axis but the first batch axis, whose matrices stay on their devices.
        kept = [spec[i] if batch and i == batch[0] else None for i in range(x.ndim)]
        if kept != spec:
            x = jax.sharding.reshard(x, jax.P(*kept))
        if batch and kept[batch[0]] is not None:
            # Each device orthogonalises its own matrices: no communication, and no
            # collective in the body whose replication would need checking.
            stacked = jax.P(kept[batch[0]], None, None)
            polar = jax.shard_map(polar, in_specs=stacked, out_specs=stacked, check_vma=False)
    order = batch + reduction + output
    moved = jnp.transpose(x, order)
    fan_in = math.prod(x.shape[a] for a in reduction)
    fan_out = math.prod(x.shape[a] for a in output)
    u = polar(moved.reshape(-1, fan_in, fan_out))
    u = jnp.transpose(u.reshape(moved.shape), tuple(order.index(a) for a in range(x.ndim)))
    if spec is not None and kept != spec:
        u = jax.sharding.reshard(u, jax.P(*spec))
    return u


def _polar_options(func: str, polar_method, coefficients, max_iters, precision) -> dict:
    """The keywords of :func:`jaxsqrtm.polar`, checked by tracing it once on a small matrix
    (so that a bad choice is reported at construction, in ``polar``'s own words)."""
    options = dict(
        method=polar_method, coefficients=coefficients, max_iters=max_iters, precision=precision
    )
    try:
        jax.eval_shape(
            functools.partial(jaxsqrtm.polar, **options),
            jax.ShapeDtypeStruct((2, 3), jnp.float32),
        )
    except (TypeError, ValueError) as error:
        raise type(error)(f"{func}: {error}") from None
    return options


def _check_beta(func: str, beta) -> None:
    if isinstance(beta, (int, float)) and not isinstance(beta, bool) and not 0 <= beta < 1:
        raise ValueError(f"{func}: beta must be in [0, 1), got {beta!r}")


def orthogonalize(
    *,
    polar_method: str = "quintic",
    coefficients=None,
    max_iters: int | None = None,
    precision: str = "highest",
    weight_dimension_numbers: WeightDimensionNumbers = None,
) -> optax.GradientTransformation:
    """Replace each matrix of the updates by its orthogonal polar factor ``U V^T``.

    A stateless transform: for an update ``G = U S V^T`` (thin SVD) along the chosen
    axes it returns :func:`jaxsqrtm.polar` of ``G`` with the given method, whose cost it
    has (``"quintic"``: 15 products of a ``min(m, n)`` Gram side; see the module's
    documentation).

    Args:
        polar_method: ``method`` of :func:`jaxsqrtm.polar`: ``"quintic"`` (optax's
            schedule, the default), ``"polar_express"``, ``"cubic"``, ``"auto"``,
            ``"svd"`` or ``"polynomial"``.
        coefficients: the schedule of ``polar_method="polynomial"``, rows ``(a, b, c)``
            of ``a x + b x^3 + c x^5`` per step (an error with any other method).
        max_iters: ``max_iters`` of :func:`jaxsqrtm.polar` (the schedules: their number
            of steps; ``"auto"``: its cap).
        precision: product precision of :func:`jaxsqrtm.polar`: ``"highest"``,
            ``"high"``, ``"default"`` or ``"bfloat16"`` (fixed schedules only).
        weight_dimension_numbers: ``None`` (every leaf is a 2-D matrix ``(fan_in,
            fan_out)``), a :class:`MuonDimensionNumbers` for every leaf, a pytree of them
            (a prefix of the updates' structure; ``None`` leaves the subtree unchanged)
            or a callable returning such a tree from the updates. Axes that are neither
            reduction nor output axes are batch axes: each slice is a matrix of its own.

    Returns:
        An :class:`optax.GradientTransformation` with an empty state.

    Raises:
        ValueError, TypeError: at construction for a method, precision, table or
            dimension numbers that are not valid; at the first update for a leaf whose
            shape does not fit its dimension numbers.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsqrtm.optim import orthogonalize
        >>> g = jnp.array([[3.0, 0.0], [0.0, 0.5]])
        >>> u, _ = orthogonalize(polar_method="svd").update(g, None)
        >>> print(jnp.round(u, 4))
        [[1. 0.]
         [0. 1.]]
    """
    func = "orthogonalize"
    options = _polar_options(func, polar_method, coefficients, max_iters, precision)
    _check_dimension_numbers(func, "weight_dimension_numbers", weight_dimension_numbers)
    leaf_fn = functools.partial(_orthogonalize_leaf, func=func, polar_options=options)

    def update_fn(updates, state, params=None):
        del params
        return _map_matrices(leaf_fn, updates, weight_dimension_numbers, func), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def scale_by_muon(
    *,
    polar_method: str = "quintic",
    coefficients=None,
    max_iters: int | None = None,
    precision: str = "highest",
    beta: float = 0.95,
    mu_dtype=None,
    nesterov: bool = True,
    adaptive: bool = False,
    weight_dimension_numbers: WeightDimensionNumbers = None,
) -> optax.GradientTransformation:
    """Muon's direction: the polar factor of the (Nesterov) momentum.

    With ``beta`` the momentum decay and ``t = 1, 2, ...`` the step::

        mu_t = beta mu_{t-1} + (1 - beta) g_t
        m_t  = beta mu_t / (1 - beta^(t+1)) + (1 - beta) g_t / (1 - beta^t)   (Nesterov)
        m_t  = mu_t / (1 - beta^t)                                           (otherwise)
        u_t  = polar(m_t)             (times <m_t, polar(m_t)> with ``adaptive``)

    as :func:`optax.contrib.scale_by_muon` computes them, with :func:`jaxsqrtm.polar`
    in place of its Newton–Schulz loop. No shape scaling, weight decay or learning rate:
    :func:`muon` chains them.

    Args:
        polar_method: ``method`` of :func:`jaxsqrtm.polar`, as in :func:`orthogonalize`.
        coefficients: the schedule of ``polar_method="polynomial"``.
        max_iters: ``max_iters`` of :func:`jaxsqrtm.polar`.
        precision: product precision of :func:`jaxsqrtm.polar`.
        beta: momentum decay, in ``[0, 1)``.
        mu_dtype: dtype of the momentum (``None``: the parameters').
        nesterov: Nesterov momentum.
        adaptive: scale each update by the dual norm ``<m_t, polar(m_t)>`` (the nuclear
            norm of ``m_t`` for an exact polar factor; Bernstein & Newhouse, 2024).
        weight_dimension_numbers: as in :func:`orthogonalize`.

    Returns:
        An :class:`optax.GradientTransformation` with state :class:`MuonState`.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsqrtm.optim import scale_by_muon
        >>> transform = scale_by_muon(polar_method="auto")
        >>> g = jnp.array([[3.0, 0.0], [0.0, 0.5]])
        >>> u, state = transform.update(g, transform.init(g))
        >>> print(jnp.round(u, 4), int(state.count))
        [[1. 0.]
         [0. 1.]] 1
    """
    func = "scale_by_muon"
    _check_beta(func, beta)
    orthogonal = orthogonalize(
        polar_method=polar_method,
        coefficients=coefficients,
        max_iters=max_iters,
        precision=precision,
        weight_dimension_numbers=weight_dimension_numbers,
    )
    mu_dtype = jax.dtypes.canonicalize_dtype(mu_dtype) if mu_dtype is not None else None

    def init_fn(params):
        return MuonState(
            count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params, dtype=mu_dtype)
        )

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, beta, 1)
        count = optax.safe_increment(state.count)
        if nesterov:
            mu_hat = jax.tree.map(
                lambda m, g: beta * m + (1 - beta) * g,
                optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
                optax.tree.bias_correction(updates, beta, count),
            )
        else:
            mu_hat = optax.tree.bias_correction(mu, beta, count)
        new_updates, _ = orthogonal.update(mu_hat, optax.EmptyState())
        if adaptive:
            new_updates = jax.tree.map(lambda m, u: jnp.sum(m * u) * u, mu_hat, new_updates)
        return new_updates, MuonState(count=count, mu=optax.tree.cast(mu, mu_dtype))

    return optax.GradientTransformation(init_fn, update_fn)


def _scale_by_shape(
    weight_dimension_numbers: WeightDimensionNumbers, consistent_rms
) -> optax.GradientTransformation:
    """Muon's shape factor per matrix, as in :func:`optax.contrib.muon`:
    ``sqrt(max(1, fan_out / fan_in))``, or ``consistent_rms * sqrt(max(fan_in, fan_out))``."""

    def scaled(x, dimension_numbers):
        _, reduction, output = _matrix_axes("muon", x.shape, dimension_numbers)
        fan_in = math.prod(x.shape[a] for a in reduction)
        fan_out = math.prod(x.shape[a] for a in output)
        if consistent_rms is None:
            return jnp.sqrt(jnp.maximum(1, fan_out / fan_in)) * x
        return jnp.sqrt(jnp.maximum(fan_in, fan_out)) * consistent_rms * x

    def update_fn(updates, state, params=None):
        del params
        return _map_matrices(scaled, updates, weight_dimension_numbers, "muon"), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    polar_method: str = "quintic",
    coefficients=None,
    max_iters: int | None = None,
    precision: str = "highest",
    beta: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
    mu_dtype=None,
    nesterov: bool = True,
    adaptive: bool = False,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: float = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: WeightDimensionNumbers = None,
    consistent_rms: float | None = None,
) -> optax.GradientTransformation:
    """Muon: momentum orthogonalised by :func:`jaxsqrtm.polar`, AdamW for the rest.

    Mirrors :func:`optax.contrib.muon` with the orthogonaliser as arguments. Matrix
    parameters get::

        W <- W - lr * (s * polar(m_t) + weight_decay * W)

    with ``m_t`` the Nesterov momentum of :func:`scale_by_muon` and ``s`` the shape
    factor ``sqrt(max(1, fan_out / fan_in))`` (or ``consistent_rms *
    sqrt(max(fan_in, fan_out))``, which gives updates an RMS independent of the shape;
    ``0.2`` matches AdamW's). Every other parameter gets :func:`optax.adamw`. With
    ``polar_method="quintic"`` and the defaults the updates are those of
    :func:`optax.contrib.muon` to float32 round-off.

    Args:
        learning_rate: learning rate or schedule of the matrix parameters.
        polar_method: ``method`` of :func:`jaxsqrtm.polar`: ``"quintic"`` (optax's 5
            steps, 15 products), ``"polar_express"`` (24 products, orthogonal to
            ``1e-2``), ``"cubic"``, ``"auto"`` (accurate to round-off, adaptive step
            count; an SVD for rank-deficient momenta), ``"svd"`` or ``"polynomial"``.
        coefficients: the schedule of ``polar_method="polynomial"``, rows ``(a, b, c)``.
        max_iters: ``max_iters`` of :func:`jaxsqrtm.polar`.
        precision: product precision of :func:`jaxsqrtm.polar` (``"bfloat16"``:
            bfloat16 operands, float32 accumulation; fixed schedules only).
        beta: momentum decay, in ``[0, 1)``.
        eps: AdamW's epsilon.
        weight_decay: decoupled weight decay of the matrix parameters (multiplied by the
            learning rate).
        weight_decay_mask: mask (or callable returning one) of the matrix parameters
            that get weight decay, as in :func:`optax.add_decayed_weights`.
        mu_dtype: dtype of both momenta (``None``: the parameters').
        nesterov: Nesterov momentum (Muon and AdamW).
        adaptive: scale each matrix update by ``<m_t, polar(m_t)>``.
        adam_b1: AdamW's first-moment decay.
        adam_b2: AdamW's second-moment decay.
        adam_eps_root: AdamW's epsilon inside the square root.
        adam_weight_decay: AdamW's weight decay.
        adam_learning_rate: AdamW's learning rate (``None``: ``learning_rate``).
        muon_weight_dimension_numbers: ``None`` (2-D parameters are matrices, all others
            go to AdamW), or a pytree of :class:`MuonDimensionNumbers` and ``None``
            (``None``: AdamW) or a callable returning one from the parameters; stacked
            layers and convolution kernels give their reduction and output axes, the
            others are batch axes.
        consistent_rms: ``None`` for the width factor, or the target RMS of the updates.

    Returns:
        An :class:`optax.GradientTransformation` (an :func:`optax.partition` of the Muon
        and AdamW branches).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsqrtm.optim import MuonDimensionNumbers, muon
        >>> params = {"stack": jnp.ones((2, 4, 3)), "b": jnp.zeros(3)}
        >>> dims = {"stack": MuonDimensionNumbers(reduction_axis=1, output_axis=2), "b": None}
        >>> optimizer = muon(0.02, polar_method="auto", muon_weight_dimension_numbers=dims)
        >>> updates, _ = optimizer.update(params, optimizer.init(params), params)
        >>> updates["stack"].shape
        (2, 4, 3)
    """
    func = "muon"
    _check_beta(func, beta)
    _check_dimension_numbers(func, "muon_weight_dimension_numbers", muon_weight_dimension_numbers)
    if consistent_rms is not None and (
        isinstance(consistent_rms, bool) or not isinstance(consistent_rms, (int, float))
    ):
        raise TypeError(f"muon: consistent_rms must be None or a float, got {consistent_rms!r}")
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    spec = muon_weight_dimension_numbers

    def param_labels(params):
        if spec is None:
            return jax.tree.map(lambda x: "muon" if jnp.ndim(x) == 2 else "adam", params)
        tree = (
            spec(params) if callable(spec) and not isinstance(spec, MuonDimensionNumbers) else spec
        )

        def label(dimension_numbers, sub):
            name = "adam" if dimension_numbers is None else "muon"
            return jax.tree.map(lambda _: name, sub)

        return jax.tree.map(label, tree, params, is_leaf=_is_spec_leaf)

    muon_branch = optax.chain(
        scale_by_muon(
            polar_method=polar_method,
            coefficients=coefficients,
            max_iters=max_iters,
            precision=precision,
            beta=beta,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
            adaptive=adaptive,
            weight_dimension_numbers=spec,
        ),
        _scale_by_shape(spec, consistent_rms),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    adam_branch = optax.adamw(
        learning_rate=adam_learning_rate,
        b1=adam_b1,
        b2=adam_b2,
        eps=eps,
        eps_root=adam_eps_root,
        weight_decay=adam_weight_decay,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
    )
    return optax.partition({"muon": muon_branch, "adam": adam_branch}, param_labels)
