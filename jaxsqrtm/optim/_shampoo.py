"""Shampoo: Kronecker-factored preconditioning with inverse roots from jaxsqrtm.

For a matrix parameter with gradient ``G_t`` (``m x n``), Shampoo (Gupta, Koren & Singer,
ICML 2018; Anil et al., "Scalable Second Order Optimization for Deep Learning", 2020)
keeps one statistic per dimension and preconditions the gradient with their inverse
fourth roots::

    L_t = beta2 L_{t-1} + (1 - beta2) G_t G_t^T        (m x m)
    R_t = beta2 R_{t-1} + (1 - beta2) G_t^T G_t        (n x n)
    P_t = (L_t + eps c_L I)^(-1/4) G_t (R_t + eps c_R I)^(-1/4)

(``beta2 = 1`` sums them, ``L_t = L_{t-1} + G_t G_t^T``, as the original algorithm does;
``c`` is the statistic's scale, about its largest eigenvalue). A tensor with
``k`` preconditioned axes has one statistic per axis, the contraction of ``G`` with itself
over the other axes, and exponent ``-1/(2k)``. The direction ``P`` is rescaled to the norm
of a simpler optimiser's step (*grafting*): Adam's (RMSProp-normalised, bias-corrected)
``G / (sqrt(v_hat) + eps)`` or SGD's ``G``.

Every root is computed by :func:`jaxsqrtm.fractional_matrix_power` (matmul-only,
per-matrix convergent, with its diagnostics), every ``precondition_every`` steps, in one
batched call per statistic size and exponent: large axes are cut into blocks of
``block_size`` (the last one padded), and all blocks of all parameters of one size are
stacked into one ``(B, s, s)`` array. A root that the diagnostics say failed is not used.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import jaxsqrtm
from jaxsqrtm import _validation

GRAFTS = ("adam", "sgd")
_REPLICATED = jax.sharding.PartitionSpec()


class ShampooState(NamedTuple):
    """State of :func:`scale_by_shampoo`.

    The statistics and roots are stacked by group (one group per statistic size ``s`` and
    exponent ``p``, in the order of :func:`shampoo_layout`'s ``groups``).

    Attributes:
        count: int32 scalar, updates applied so far.
        statistics: one float32 ``(B, s, s)`` array per group. Blocks that are padding
            (whole blocks added to make ``B`` a multiple of the device count, or the
            padded rows of a partial block) hold zeros.
        roots: one float32 ``(B, s, s)`` array per group, the inverse roots in use
            (the identity until the first successful root computation).
        residuals: one float32 ``(B,)`` array per group, the residual reported for each
            block by the last root computation (0 before the first).
        graft_nu: Adam grafting's second moments, float32 arrays of the parameters'
            shapes (``None`` for SGD grafting).
        discarded_roots: int32 scalar, roots rejected by the failure rule so far.
    """

    count: jax.Array
    statistics: tuple[jax.Array, ...]
    roots: tuple[jax.Array, ...]
    residuals: tuple[jax.Array, ...]
    graft_nu: Any
    discarded_roots: jax.Array


@dataclasses.dataclass(frozen=True)
class _Group:
    """Statistics of size ``size`` with exponent ``exponent``: ``count`` real blocks,
    stacked to ``padded_count`` rows; ``valid[i]`` real rows/columns of block ``i``."""

    size: int
    exponent: int
    count: int
    padded_count: int
    valid: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """How one parameter is blocked: its shape merged into ``merged``, each merged axis
    padded to ``padded`` and cut into ``grid`` blocks of ``extent``; ``slots[j]`` is the
    ``(group, offset)`` of the statistics of preconditioned axis ``axes[j]``."""

    shape: tuple[int, ...]
    merged: tuple[int, ...]
    padded: tuple[int, ...]
    grid: tuple[int, ...]
    extent: tuple[int, ...]
    axes: tuple[int, ...]
    slots: tuple[tuple[int, int], ...]

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid)


class ShampooLayout(NamedTuple):
    """The static block structure of a parameter tree (see :func:`shampoo_layout`).

    Attributes:
        leaves: per parameter leaf (tree-flatten order), ``None`` for a parameter that is
            not preconditioned (graft step only), else a description with ``merged``
            (the shape after merging small axes), ``axes`` (the preconditioned merged
            axes), ``extent`` (block size per merged axis), ``grid`` (blocks per merged
            axis) and ``slots`` (group and first row of each axis' statistics).
        groups: per group, ``size``, ``exponent``, ``count`` (real blocks),
            ``padded_count`` (rows of the stacked arrays) and ``valid`` (real rows per
            block).
    """

    leaves: tuple[_Leaf | None, ...]
    groups: tuple[_Group, ...]


def _merge_small_axes(shape, limit):
    """Drop unit axes, then merge neighbouring axes while their product stays ``<= limit``."""
    merged = []
    for d in shape:
        if d == 1:
            continue
        if merged and merged[-1] * d <= limit:
            merged[-1] *= d
        else:
            merged.append(d)
    return tuple(merged)


def _explicit_mesh_axes():
    """Names of the current mesh's ``Explicit`` axes and their total size."""
    mesh = jax.sharding.get_abstract_mesh()
    names = tuple(
        name
        for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind == jax.sharding.AxisType.Explicit
    )
    return names, math.prod(mesh.shape[name] for name in names)


def shampoo_layout(
    shapes,
    *,
    block_size: int = 128,
    max_preconditioner_dim: int = 4096,
    merge_small_dims: bool = True,
    exponent_override: int | None = None,
    num_shards: int = 1,
) -> ShampooLayout:
    """Block structure that :func:`scale_by_shampoo` gives parameters of these shapes.

    A parameter with fewer than 2 dimensions is not preconditioned. Otherwise its unit
    axes are dropped and neighbouring axes merged while their product is at most
    ``block_size`` (with ``merge_small_dims``); every merged axis of length at most
    ``max_preconditioner_dim`` is preconditioned, and one longer than ``block_size`` is
    cut into blocks of ``block_size`` (the last padded). A parameter with no
    preconditioned axis is not preconditioned.

    Args:
        shapes: a sequence of shapes, one per parameter leaf.
        block_size, max_preconditioner_dim, merge_small_dims, exponent_override: as in
            :func:`scale_by_shampoo`.
        num_shards: each group's stack is padded to a multiple of it.

    Returns:
        A :class:`ShampooLayout`.
    """
    keys: dict[tuple[int, int], list] = {}
    pending = []
    for shape in shapes:
        shape = tuple(int(d) for d in shape)
        merged = _merge_small_axes(shape, block_size if merge_small_dims else 1)
        axes = tuple(i for i, d in enumerate(merged) if d <= max_preconditioner_dim)
        if len(shape) < 2 or not axes:
            pending.append(None)
            continue
        blocked = [i in axes and d > block_size for i, d in enumerate(merged)]
        extent = tuple(block_size if b else d for b, d in zip(blocked, merged, strict=True))
        grid = tuple(-(-d // e) for d, e in zip(merged, extent, strict=True))
        padded = tuple(g * e for g, e in zip(grid, extent, strict=True))
        exponent = exponent_override or 2 * len(axes)
        slots = []
        for i in axes:
            rows = keys.setdefault((extent[i], exponent), [])
            slots.append(len(rows))
            # Real rows of each block of axis i, in the blocks' row-major grid order.
            index = np.unravel_index(np.arange(math.prod(grid)), grid)[i]
            rows.extend(np.minimum(extent[i], merged[i] - index * extent[i]).tolist())
        pending.append((shape, merged, padded, grid, extent, axes, slots, exponent))

    order = {key: g for g, key in enumerate(keys)}
    groups = tuple(
        _Group(
            size=size,
            exponent=exponent,
            count=len(rows),
            padded_count=-(-len(rows) // num_shards) * num_shards,
            valid=tuple(rows) + (0,) * ((-len(rows)) % num_shards),
        )
        for (size, exponent), rows in keys.items()
    )
    leaves = []
    for item in pending:
        if item is None:
            leaves.append(None)
            continue
        shape, merged, padded, grid, extent, axes, offsets, exponent = item
        slots = tuple(
            (order[(extent[i], exponent)], offset) for i, offset in zip(axes, offsets, strict=True)
        )
        leaves.append(_Leaf(shape, merged, padded, grid, extent, axes, slots))
    return ShampooLayout(tuple(leaves), groups)


# --- Blocks ---------------------------------------------------------------------------


def _to_blocks(g, leaf: _Leaf):
    """``(N, e_1, ..., e_r)`` blocks of a gradient, zero-padded (row-major block order)."""
    r = len(leaf.merged)
    x = g.reshape(leaf.merged)
    x = jnp.pad(x, [(0, p - d) for p, d in zip(leaf.padded, leaf.merged, strict=True)])
    x = x.reshape([n for pair in zip(leaf.grid, leaf.extent, strict=True) for n in pair])
    x = x.transpose([2 * i for i in range(r)] + [2 * i + 1 for i in range(r)])
    return x.reshape((leaf.num_blocks, *leaf.extent))


def _from_blocks(x, leaf: _Leaf):
    """Inverse of :func:`_to_blocks`: the parameter-shaped array, padding cropped."""
    r = len(leaf.merged)
    x = x.reshape(leaf.grid + leaf.extent)
    x = x.transpose([j for i in range(r) for j in (i, r + i)]).reshape(leaf.padded)
    x = x[tuple(slice(0, d) for d in leaf.merged)]
    return x.reshape(leaf.shape)


def _axis_statistic(blocks, axis: int):
    """``G_(axis) G_(axis)^T`` per block: ``(N, e, e)``, contracting every other axis."""
    x = jnp.moveaxis(blocks, 1 + axis, 1)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    return jnp.matmul(x, jnp.swapaxes(x, -1, -2), precision=lax.Precision.HIGHEST)


def _apply_on_axis(blocks, root, axis: int):
    """Multiply every block by its symmetric ``(e, e)`` root along ``axis``."""
    x = jnp.moveaxis(blocks, 1 + axis, -1)
    shape = x.shape
    x = x.reshape(shape[0], -1, shape[-1])
    x = jnp.matmul(x, root, precision=lax.Precision.HIGHEST).reshape(shape)
    return jnp.moveaxis(x, -1, 1 + axis)


# --- The transformation ---------------------------------------------------------------


def _check_unit(func, name, value, *, closed_low=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{func}: {name} must be a Python float, got {value!r}")
    if not (0 <= value <= 1 if closed_low else 0 < value <= 1):
        interval = "[0, 1]" if closed_low else "(0, 1]"
        raise ValueError(f"{func}: {name} must be in {interval}, got {value!r}")
    return float(value)


def _check_positive(func, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{func}: {name} must be a Python float, got {value!r}")
    if not value > 0:
        raise ValueError(f"{func}: {name} must be > 0, got {value!r}")
    return float(value)


def _check_knobs(func, knobs: dict) -> dict:
    """Trace-time checks of :func:`scale_by_shampoo`'s keyword arguments."""
    checked = dict(knobs)
    for name in ("block_size", "precondition_every", "max_preconditioner_dim"):
        checked[name] = _validation.check_count(func, name, knobs[name])
    if checked["block_size"] < 2:
        raise ValueError(f"{func}: block_size must be >= 2, got {knobs['block_size']}")
    checked["beta2"] = _check_unit(func, "beta2", knobs["beta2"])
    checked["graft_b2"] = _check_unit(func, "graft_b2", knobs["graft_b2"], closed_low=True)
    if checked["graft_b2"] == 1:
        raise ValueError(f"{func}: graft_b2 must be in [0, 1), got {knobs['graft_b2']!r}")
    checked["graft_eps"] = _check_positive(func, "graft_eps", knobs["graft_eps"])
    checked["failure_threshold"] = _check_positive(
        func, "failure_threshold", knobs["failure_threshold"]
    )
    checked["matrix_epsilon"] = _validation.check_fraction(
        func, "matrix_epsilon", knobs["matrix_epsilon"]
    )
    checked["graft"] = _validation.check_choice(func, "graft", knobs["graft"], GRAFTS)
    checked["root_method"] = _validation.check_choice(
        func, "root_method", knobs["root_method"], jaxsqrtm.POWER_METHODS
    )
    checked["merge_small_dims"] = _validation.check_bool(
        func, "merge_small_dims", knobs["merge_small_dims"]
    )
    if knobs["exponent_override"] is not None:
        checked["exponent_override"] = _validation.check_count(
            func, "exponent_override", knobs["exponent_override"]
        )
    _validation.check_precision(func, knobs["precision"])
    return checked


def scale_by_shampoo(
    *,
    block_size: int = 128,
    precondition_every: int = 10,
    beta2: float = 1.0,
    matrix_epsilon: float = 1e-6,
    graft: str = "adam",
    graft_b2: float = 0.999,
    graft_eps: float = 1e-8,
    exponent_override: int | None = None,
    max_preconditioner_dim: int = 4096,
    merge_small_dims: bool = True,
    failure_threshold: float = 0.1,
    root_method: str = "auto",
    precision="highest",
) -> optax.GradientTransformation:
    """Shampoo's preconditioned direction, grafted to the norm of an Adam or SGD step.

    Per parameter with at least 2 dimensions (blocked as :func:`shampoo_layout` says):
    each preconditioned axis ``i`` of each block keeps the float32 statistic
    ``S_i <- beta2 S_i + (1 - beta2) G_(i) G_(i)^T`` (``G_(i)`` the block unfolded along
    axis ``i``; ``S_i <- S_i + G_(i) G_(i)^T`` when ``beta2 = 1``). The direction is
    ``P = G x_1 X_1 ... x_k X_k`` with the roots ``X_i = (S_i + eps c_i I)^(-1/p)``,
    ``p = 2k`` (4 for a matrix, 6 for a 3-axis kernel; ``exponent_override`` replaces it),
    ``eps = matrix_epsilon`` and ``c_i`` the per-matrix scale of
    :func:`jaxsqrtm.fractional_matrix_power` (an upper bound of the largest eigenvalue):
    the ridge bounds each root's condition number by ``eps^(-1/p)``. The update is
    ``P * ||D|| / ||P||``, norms over the whole parameter, with ``D`` the graft step:
    ``G / (sqrt(v_hat) + graft_eps)`` (``"adam"``: ``v`` an EMA of ``G^2`` with
    ``graft_b2``, bias-corrected) or ``G`` (``"sgd"``). Parameters with fewer than 2
    dimensions, or no axis of length ``<= max_preconditioner_dim``, get ``D`` itself.
    Momentum, weight decay and the learning rate are separate transformations
    (:func:`shampoo` chains them).

    Roots are recomputed on the updates whose count (before the update) is a multiple
    of ``precondition_every``, the first update included, under a ``lax.cond``: the
    other steps cost the statistics and the products only. On those updates, every
    statistic of size ``s`` and exponent ``p`` of every parameter goes into one batched
    ``fractional_matrix_power(S, -1/p, ridge=matrix_epsilon, return_info=True)``. Rows
    that pad a partial block are set to the block's mean eigenvalue ``tr S / s_real``
    (an invariant subspace that the gradient's zero padding never sees, so it changes
    neither the root on the real rows nor the scale); a statistic with zero trace
    (no gradient yet) is replaced by the identity.

    Failure rule: a root is discarded, and the previous one kept (the identity before
    the first success), when the reported iteration did not converge, its residual is
    ``>= failure_threshold`` or not finite, or the root has a non-finite entry.
    :attr:`ShampooState.discarded_roots` counts them.

    Cost per update and block with axes ``e_1 .. e_k`` (``M`` entries): ``2k`` products
    of ``e_i x (M / e_i)`` by ``e_i x e_i`` for statistics and preconditioning; on root
    updates, the roots (see :func:`jaxsqrtm.fractional_matrix_power`).

    Sharding: under a mesh with ``jax.sharding.AxisType.Explicit`` axes (``jax.set_mesh``)
    the updates and the parameter-shaped state (``graft_nu``) have the gradients'
    shardings. The stacked statistics are sharded over their block axis across all
    explicit mesh axes (each group padded to a multiple of the device count with blocks
    whose root is the identity), so the root computation is split over the devices; the
    roots are replicated (gathered once per root computation) and the block products run
    on the replicated gradient. ``init`` and ``update`` must run under the same mesh.

    Args:
        block_size: largest statistic size; longer axes are cut into blocks.
        precondition_every: updates between root computations.
        beta2: statistics decay; ``1`` sums them.
        matrix_epsilon: ridge relative to each statistic's scale, in ``[0, 1)``. In
            float32 the residual of a rank-deficient statistic's root is about
            ``2.4e-8 / matrix_epsilon`` (measured: 2.4e-2 at the default, 2.4e-3 at
            ``1e-5``), so values below about ``3e-7`` make the failure rule discard
            the roots of such statistics.
        graft: ``"adam"`` or ``"sgd"``, the step whose norm the update takes.
        graft_b2: decay of Adam grafting's second moment, in ``[0, 1)``.
        graft_eps: Adam grafting's denominator epsilon.
        exponent_override: root exponent ``p >= 1`` for every parameter (default:
            ``2k`` for ``k`` preconditioned axes).
        max_preconditioner_dim: axes longer than this are not preconditioned (identity
            on that axis; a parameter left with none gets the graft step).
        merge_small_dims: merge neighbouring axes whose product is ``<= block_size``
            (a ``3x3x32x64`` kernel becomes ``9x32x64``).
        failure_threshold: largest residual accepted.
        root_method: ``method`` of :func:`jaxsqrtm.fractional_matrix_power`.
        precision: matmul precision of the root iterations.

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`ShampooState`.

    Raises:
        TypeError, ValueError: a knob of the wrong type or out of range, or a root method
            or precision that :func:`jaxsqrtm.fractional_matrix_power` does not know (at
            construction).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from jaxsqrtm.optim import scale_by_shampoo
        >>> tx = scale_by_shampoo(precondition_every=1)
        >>> params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
        >>> state = tx.init(params)
        >>> grads = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4)}
        >>> updates, state = tx.update(grads, state)
        >>> updates["w"].shape, int(state.discarded_roots)
        ((3, 4), 0)
    """
    knobs = _check_knobs("scale_by_shampoo", dict(locals()))
    graft_name = knobs["graft"]

    def layout_of(tree):
        _, shards = _explicit_mesh_axes()
        shapes = [np.shape(x) for x in jax.tree.leaves(tree)]
        return shampoo_layout(
            shapes,
            block_size=knobs["block_size"],
            max_preconditioner_dim=knobs["max_preconditioner_dim"],
            merge_small_dims=knobs["merge_small_dims"],
            exponent_override=knobs["exponent_override"],
            num_shards=shards,
        )

    def stacked_spec():
        names, _ = _explicit_mesh_axes()
        return jax.sharding.PartitionSpec(names) if names else None

    def init_fn(params):
        layout = layout_of(params)
        spec = stacked_spec()
        stats, roots, residuals = [], [], []
        for group in layout.groups:
            shape = (group.padded_count, group.size, group.size)
            zeros = jnp.zeros(shape, jnp.float32)
            stats.append(zeros if spec is None else jax.sharding.reshard(zeros, spec))
            roots.append(jnp.broadcast_to(jnp.eye(group.size, dtype=jnp.float32), shape))
            residuals.append(jnp.zeros(group.padded_count, jnp.float32))
        nu = None
        if graft_name == "adam":
            nu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params)
        return ShampooState(
            count=jnp.zeros([], jnp.int32),
            statistics=tuple(stats),
            roots=tuple(roots),
            residuals=tuple(residuals),
            graft_nu=nu,
            discarded_roots=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        layout = layout_of(updates)
        spec = stacked_spec()
        grads = [g.astype(jnp.float32) for g in leaves]
        replicated = [g if spec is None else jax.sharding.reshard(g, _REPLICATED) for g in grads]
        blocks = [
            None if leaf is None else _to_blocks(g, leaf)
            for g, leaf in zip(replicated, layout.leaves, strict=True)
        ]

        # Statistics: each group's contributions in stack order, then padding blocks.
        parts = [[] for _ in layout.groups]
        for x, leaf in zip(blocks, layout.leaves, strict=True):
            if leaf is not None:
                for axis, (g, _) in zip(leaf.axes, leaf.slots, strict=True):
                    parts[g].append(_axis_statistic(x, axis))
        stats = []
        for group, old, part in zip(layout.groups, state.statistics, parts, strict=True):
            size = group.size
            pad = jnp.zeros((group.padded_count - group.count, size, size), jnp.float32)
            new = jnp.concatenate([*part, pad])
            if spec is not None:
                new = jax.sharding.reshard(new, spec)
            beta2 = knobs["beta2"]
            stats.append(old + new if beta2 == 1 else beta2 * old + (1 - beta2) * new)
        stats = tuple(stats)

        roots, residuals, discarded = lax.cond(
            state.count % knobs["precondition_every"] == 0,
            lambda: _compute_roots(stats, state, layout.groups, knobs, spec),
            lambda: (state.roots, state.residuals, state.discarded_roots),
        )

        count = state.count + 1
        if graft_name == "adam":
            b2 = knobs["graft_b2"]
            nu = [
                b2 * v + (1 - b2) * jnp.square(g)
                for v, g in zip(jax.tree.leaves(state.graft_nu), grads, strict=True)
            ]
            # 1 - b2^t as -expm1(t log(b2)): no cancellation for b2 close to 1.
            log_b2 = math.log(b2) if b2 > 0 else -math.inf
            correction = -jnp.expm1(count.astype(jnp.float32) * log_b2)
            graft_steps = [
                g / (jnp.sqrt(v / correction) + knobs["graft_eps"])
                for g, v in zip(grads, nu, strict=True)
            ]
            graft_nu = jax.tree.unflatten(treedef, nu)
        else:
            graft_steps, graft_nu = grads, None

        out = []
        for g, x, leaf, step in zip(leaves, blocks, layout.leaves, graft_steps, strict=True):
            if leaf is None:
                out.append(step.astype(g.dtype))
                continue
            for axis, (group, offset) in zip(leaf.axes, leaf.slots, strict=True):
                root = lax.slice_in_dim(roots[group], offset, offset + leaf.num_blocks)
                x = _apply_on_axis(x, root, axis)
            direction = _from_blocks(x, leaf)
            if spec is not None:
                direction = jax.sharding.reshard(direction, jax.typeof(g).sharding.spec)
            norm = jnp.linalg.norm(direction)
            scale = jnp.where(norm > 0, jnp.linalg.norm(step) / jnp.where(norm > 0, norm, 1), 0)
            out.append((direction * scale).astype(g.dtype))

        new_state = ShampooState(
            count=count,
            statistics=stats,
            roots=roots,
            residuals=residuals,
            graft_nu=graft_nu,
            discarded_roots=discarded,
        )
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _compute_roots(stats, state, groups, knobs, spec):
    """New roots, residuals and discard count: one batched root call per group."""
    roots, residuals, discarded = [], [], state.discarded_roots
    for group, s, old in zip(groups, stats, state.roots, strict=True):
        valid = np.asarray(group.valid)
        padding = np.arange(group.size)[None, :] >= valid[:, None]  # (B, s) padded rows
        trace = jnp.trace(s, axis1=-2, axis2=-1)
        mean = trace / np.maximum(valid, 1)
        diagonal = jnp.where(
            (trace > 0)[:, None], jnp.where(padding, mean[:, None], 0), jnp.ones_like(mean)[:, None]
        )
        a = s + diagonal[..., None] * jnp.eye(group.size, dtype=s.dtype)
        x, info = jaxsqrtm.fractional_matrix_power(
            a,
            -1 / group.exponent,
            method=knobs["root_method"],
            ridge=knobs["matrix_epsilon"],
            precision=knobs["precision"],
            return_info=True,
        )
        ok = (
            info.converged
            & (info.residual < knobs["failure_threshold"])
            & jnp.all(jnp.isfinite(x), axis=(-2, -1))
        )
        new = jnp.where(ok[:, None, None], x, old)
        residual = info.residual.astype(jnp.float32)
        if spec is not None:
            new = jax.sharding.reshard(new, _REPLICATED)
            residual = jax.sharding.reshard(residual, _REPLICATED)
        roots.append(new)
        residuals.append(residual)
        discarded = discarded + jnp.sum(~ok, dtype=jnp.int32)
    return tuple(roots), tuple(residuals), discarded


def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mask=None,
    **shampoo_options,
) -> optax.GradientTransformation:
    """Shampoo with grafting, momentum and decoupled weight decay.

    ``optax.chain(scale_by_shampoo(**shampoo_options), optax.ema(b1, debias=True),
    optax.add_decayed_weights(weight_decay, weight_decay_mask),
    optax.scale_by_learning_rate(learning_rate))``: the grafted direction of
    :func:`scale_by_shampoo` averaged with momentum ``b1`` (bias-corrected, so the
    learning rate has Adam's scale when grafting to Adam), plus AdamW-style decoupled
    weight decay, times ``-learning_rate``.

    Args:
        learning_rate: a float or an optax schedule.
        b1: momentum of the grafted direction, in ``[0, 1)``.
        weight_decay: decoupled weight decay (needs ``params`` in ``update``).
        weight_decay_mask: optional mask tree or callable, as in ``optax.adamw``.
        **shampoo_options: keyword arguments of :func:`scale_by_shampoo`.

    Returns:
        An ``optax.GradientTransformation``; ``optax.tree.get(state, "discarded_roots")``
        reads the discarded-root count from its state.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from jaxsqrtm.optim import shampoo
        >>> tx = shampoo(1e-2, precondition_every=5)
        >>> params = {"w": jnp.ones((3, 4))}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones((3, 4))}, state, params)
        >>> int(optax.tree.get(state, "discarded_roots"))
        0
    """
    b1 = _check_unit("shampoo", "b1", b1, closed_low=True)
    if b1 == 1:
        raise ValueError(f"shampoo: b1 must be in [0, 1), got {b1!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float, np.floating)):
        raise TypeError(f"shampoo: weight_decay must be a Python float, got {weight_decay!r}")
    if weight_decay < 0:
        raise ValueError(f"shampoo: weight_decay must be >= 0, got {weight_decay!r}")
    return optax.chain(
        scale_by_shampoo(**shampoo_options),
        optax.ema(b1, debias=True),
        optax.add_decayed_weights(float(weight_decay), weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )
