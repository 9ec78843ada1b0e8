"""Flax linen layers built on :func:`jaxsqrtm.sqrtm` and :func:`jaxsqrtm.inv_sqrtm`.

The five applications of Song, Sebe & Wang (TPAMI 2022):

* :class:`DecorrelatedBatchNorm`: ZCA-whitening batch normalisation over channel groups.
* :class:`CovariancePooling`: global covariance pooling with matrix power normalisation
  (iSQRT-COV style) for feature maps and token sequences.
* :class:`SecondOrderViTHead`: So-ViT head, class token plus covariance-pooled tokens.
* :class:`AttentiveCovariancePooling`: covariance pooling of video features with learned
  attention over positions and frames.
* :func:`whitening_coloring_transform`: WCT for style transfer.

Every layer takes the root's ``method`` (``None``: the library's default) and a mapping
``sqrtm_options`` of the other keyword arguments of :func:`jaxsqrtm.sqrtm` (``degree``,
``num_iters``, ``normalization``, ``backward_iters``, ``precision``), which the library
validates. Statistics are computed in at least float32 whatever the input dtype.

This module needs Flax (``pip install jaxsqrtm[linen]``); the core package does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import dtypes
from jax import lax

import jaxsqrtm

__all__ = [
    "AttentiveCovariancePooling",
    "CovariancePooling",
    "DecorrelatedBatchNorm",
    "SecondOrderViTHead",
    "whitening_coloring_transform",
]

OUTPUTS = ("triu", "matrix")

_HIGHEST = lax.Precision.HIGHEST


def _statistics_dtype(dtype):
    """At least float32: half-precision inputs get float32 statistics, float64 stays."""
    return jnp.promote_types(dtype, jnp.float32)


def _matrix_root(a, *, inverse: bool, method: str | None, sqrtm_options: Mapping | None):
    """``A^(1/2)`` or ``A^(-1/2)`` with the layer's method and knobs.

    ``method=None`` leaves the choice to the library's default.
    """
    options = dict(sqrtm_options or {})
    if "method" in options:
        raise ValueError(
            f"sqrtm_options must not contain 'method' (got {options['method']!r}); "
            "pass it as the layer's `method` attribute"
        )
    if options.get("return_info"):
        raise ValueError("sqrtm_options must not set 'return_info': the layers use the root itself")
    if method is not None:
        options["method"] = method
    root = jaxsqrtm.inv_sqrtm if inverse else jaxsqrtm.sqrtm
    return root(a, **options)


def _check_rank(x, ranks: tuple[int, ...], where: str, layout: str) -> None:
    if x.ndim not in ranks:
        raise ValueError(
            f"{where}: expected input of rank {' or '.join(map(str, ranks))} ({layout}); "
            f"got shape {tuple(x.shape)} of rank {x.ndim}"
        )


def _check_output(output: str, where: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"{where}: output must be one of {OUTPUTS}, got {output!r}")


def _weighted_covariance(tokens, weights=None):
    """Covariance of ``(..., P, C)`` tokens over their ``P`` positions.

    ``mu = sum_p w_p x_p``, ``Sigma = sum_p w_p (x_p - mu)(x_p - mu)^T`` with ``w_p = 1/P``
    when ``weights`` (``(..., P)``, summing to 1) is ``None``.

    Returns:
        ``(mean, covariance)`` of shapes ``(..., C)`` and ``(..., C, C)``.
    """
    if weights is None:
        weights = jnp.full(tokens.shape[:-1], 1 / tokens.shape[-2], tokens.dtype)
    mean = jnp.einsum("...p,...pc->...c", weights, tokens, precision=_HIGHEST)
    centered = tokens - mean[..., None, :]
    covariance = jnp.einsum(
        "...p,...pi,...pj->...ij", weights, centered, centered, precision=_HIGHEST
    )
    return mean, covariance


def _power_normalize(covariance, *, compensate, epsilon, method, sqrtm_options):
    """Matrix power normalisation ``sqrt(tr A) * (A / tr A + eps I)^(1/2)``.

    Pre-normalisation by the trace makes the root scale-free; post-compensation by
    ``sqrt(tr A)`` (when ``compensate``) restores the magnitude (iSQRT-COV). A zero matrix
    gives a zero root.
    """
    trace = jnp.trace(covariance, axis1=-2, axis2=-1)[..., None, None]
    trace = jnp.where(trace > 0, trace, 1)
    normalized = covariance / trace
    if epsilon:
        normalized = normalized + epsilon * jnp.eye(covariance.shape[-1], dtype=trace.dtype)
    root = _matrix_root(normalized, inverse=False, method=method, sqrtm_options=sqrtm_options)
    return root * jnp.sqrt(trace) if compensate else root


def _format_output(root, output):
    """``(..., C, C)`` as it is (``"matrix"``) or as its ``C (C + 1) / 2`` upper-triangular
    entries, row by row (``"triu"``)."""
    if output == "matrix":
        return root
    rows, cols = np.triu_indices(root.shape[-1])
    return root[..., rows, cols]


def _pooled_covariance_root(tokens, weights, module):
    """Shared body of the pooling layers: covariance, power normalisation, output."""
    stats = tokens.astype(_statistics_dtype(tokens.dtype))
    if weights is not None:
        weights = weights.astype(stats.dtype)
    _, covariance = _weighted_covariance(stats, weights)
    root = _power_normalize(
        covariance,
        compensate=module.compensate,
        epsilon=module.epsilon,
        method=module.method,
        sqrtm_options=module.sqrtm_options,
    )
    dtype = module.dtype if module.dtype is not None else tokens.dtype
    return _format_output(root, module.output).astype(dtype)


class DecorrelatedBatchNorm(nn.Module):
    """Decorrelated (ZCA-whitening) batch normalisation over groups of channels.

    Channels (last axis) are split into ``C / group_size`` groups of ``g = group_size``;
    all other axes are samples. For each group, with batch mean ``mu`` and covariance
    ``Sigma`` (``g x g``) over the ``M`` samples,

        ``y = scale * (x - mu) W + bias``,  ``W = (Sigma + epsilon I)^(-1/2)``,

    so that ``y`` has identity group covariance before the affine map (Huang et al.,
    CVPR 2018; Song et al., TPAMI 2022). ``W`` is computed with
    :func:`jaxsqrtm.inv_sqrtm` and the chosen ``method``; cost per step is one
    ``g x g`` inverse root per group plus ``O(M C g)`` for the covariance and whitening.

    Conventions follow :class:`flax.linen.BatchNorm`: running ``mean`` (``(C,)``) and
    ``whitening`` (``(C / g, g, g)``, starting at the identity) live in the
    ``'batch_stats'`` collection and are updated as ``r <- momentum r + (1 - momentum) b``
    in training mode (not while initialising); statistics are computed in at least
    float32; ``axis_name``/``axis_index_groups`` average the mean and covariance across
    devices with :func:`jax.lax.pmean` (skipped while initialising; every device must
    hold the same number of samples).

    Attributes:
        use_running_average: use the stored statistics instead of the batch's; may be
            given here or at call time, not both.
        group_size: channels per whitened group; must divide the channel count.
        momentum: decay rate of the running statistics.
        epsilon: ridge added to each group covariance.
        dtype: output dtype (default: from the input and parameters).
        param_dtype: dtype of ``scale`` and ``bias``.
        use_bias: add a learnable per-channel ``bias``.
        use_scale: multiply by a learnable per-channel ``scale``.
        bias_init: initialiser of ``bias``.
        scale_init: initialiser of ``scale``.
        axis_name: named axis over which to average statistics (``pmap``, ``shard_map``,
            ``nn.vmap``).
        axis_index_groups: groups of indices of ``axis_name`` to average within.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.inv_sqrtm`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxsqrtm.linen import DecorrelatedBatchNorm
        >>> layer = DecorrelatedBatchNorm(group_size=4, momentum=0.9)
        >>> x = jax.random.normal(jax.random.key(0), (32, 8))
        >>> variables = layer.init(jax.random.key(1), x, use_running_average=False)
        >>> jax.tree_util.tree_map(jnp.shape, variables["batch_stats"])
        {'mean': (8,), 'whitening': (2, 4, 4)}
        >>> y, updates = layer.apply(
        ...     variables, x, use_running_average=False, mutable=["batch_stats"]
        ... )
        >>> y.shape
        (32, 8)
    """

    use_running_average: bool | None = None
    group_size: int = 16
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = nn.initializers.zeros
    scale_init: Any = nn.initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None
    method: str | None = None
    sqrtm_options: Mapping[str, Any] | None = None

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        """Whitens ``x`` of shape ``(..., C)`` (e.g. ``(N, C)``, ``(N, H, W, C)``,
        ``(N, T, H, W, C)``); returns the same shape."""
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        num_groups = _check_groups(x.shape, self.group_size)
        channels, g = x.shape[-1], self.group_size
        stats_dtype = _statistics_dtype(x.dtype)

        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((channels,), stats_dtype)
        )
        running_whitening = self.variable(
            "batch_stats",
            "whitening",
            lambda: jnp.broadcast_to(jnp.eye(g, dtype=stats_dtype), (num_groups, g, g)),
        )

        samples = x.astype(stats_dtype).reshape(-1, num_groups, g)
        if use_running_average:
            mean = running_mean.value.astype(stats_dtype).reshape(num_groups, g)
            whitening = running_whitening.value.astype(stats_dtype)
        else:
            initializing = self.is_initializing()
            mean, covariance = _group_statistics(
                samples,
                axis_name=None if initializing else self.axis_name,
                axis_index_groups=self.axis_index_groups,
            )
            ridge = self.epsilon * jnp.eye(g, dtype=stats_dtype)
            whitening = _matrix_root(
                covariance + ridge,
                inverse=True,
                method=self.method,
                sqrtm_options=self.sqrtm_options,
            )
            if not initializing:
                running_mean.value = _moving_average(
                    running_mean.value, mean.reshape(channels), self.momentum
                )
                running_whitening.value = _moving_average(
                    running_whitening.value, whitening, self.momentum
                )

        whitened = jnp.einsum("mgi,gij->mgj", samples - mean, whitening, precision=_HIGHEST)
        y = whitened.reshape(x.shape)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
            y = y * scale
            args.append(scale)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
            y = y + bias
            args.append(bias)
        return y.astype(dtypes.canonicalize_dtype(*args, dtype=self.dtype))


def _check_groups(shape, group_size) -> int:
    """Number of channel groups; ``ValueError`` naming the shape and group size."""
    if len(shape) < 2:
        raise ValueError(
            "DecorrelatedBatchNorm: expected input of rank >= 2 with channels last, e.g. "
            f"(N, C), (N, H, W, C) or (N, T, H, W, C); got shape {tuple(shape)}"
        )
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"DecorrelatedBatchNorm: group_size must be an int, got {group_size!r}")
    channels = shape[-1]
    if group_size < 1 or channels % group_size:
        raise ValueError(
            f"DecorrelatedBatchNorm: group_size={group_size} does not divide the "
            f"{channels} channels of input shape {tuple(shape)}"
        )
    return channels // group_size


def _group_statistics(samples, *, axis_name, axis_index_groups):
    """Mean ``(G, g)`` and covariance ``(G, g, g)`` of ``(M, G, g)`` samples.

    Two passes, each averaged over ``axis_name`` when given: the global mean, then the
    second moment about it, so that equal-sized shards give the statistics of their
    union.
    """

    def mean_over_devices(value):
        if axis_name is None:
            return value
        return lax.pmean(value, axis_name, axis_index_groups=axis_index_groups)

    mean = mean_over_devices(jnp.mean(samples, axis=0))
    centered = samples - mean
    second_moment = jnp.einsum("mgi,mgj->gij", centered, centered, precision=_HIGHEST)
    covariance = mean_over_devices(second_moment / samples.shape[0])
    return mean, covariance


def _moving_average(running, batch, momentum):
    return (momentum * running + (1 - momentum) * batch).astype(running.dtype)


class _CovariancePoolingFields(nn.Module):
    """The attributes shared by the covariance-pooling layers (documented on each)."""

    reduced_channels: int | None = None
    output: str = "triu"
    compensate: bool = True
    epsilon: float = 0.0
    method: str | None = None
    sqrtm_options: Mapping[str, Any] | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32


class CovariancePooling(_CovariancePoolingFields):
    """Global covariance pooling with matrix power normalisation (iSQRT-COV style).

    For ``(N, H, W, C)`` feature maps or ``(N, L, C)`` token sequences: an optional
    linear channel reduction to ``C' = reduced_channels`` (a 1x1 convolution), the
    covariance ``A`` (``C' x C'``) of the ``P = H W`` (or ``L``) positions, and

        ``Y = sqrt(tr A) * (A / tr A + epsilon I)^(1/2)``

    (pre-normalisation by the trace, square root by :func:`jaxsqrtm.sqrtm` with the
    chosen ``method``, post-compensation by ``sqrt(tr A)`` when ``compensate``). Output:
    the ``C' (C' + 1) / 2`` upper-triangular entries of ``Y`` (``output="triu"``), or
    ``Y`` itself (``output="matrix"``).

    Attributes:
        reduced_channels: channels after the 1x1 reduction (``None``: no reduction).
        output: ``"triu"`` (``(N, C' (C' + 1) / 2)``) or ``"matrix"`` (``(N, C', C')``).
        compensate: multiply the root by ``sqrt(tr A)``.
        epsilon: ridge added to the trace-normalised covariance.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.
        dtype: output dtype (default: the dtype of the features); the covariance and
            root are computed in at least float32.
        param_dtype: dtype of the reduction's parameters.

    Example:
        >>> import jax
        >>> from jaxsqrtm.linen import CovariancePooling
        >>> x = jax.random.normal(jax.random.key(0), (2, 7, 7, 32))
        >>> layer = CovariancePooling(reduced_channels=8)
        >>> variables = layer.init(jax.random.key(1), x)
        >>> layer.apply(variables, x).shape
        (2, 36)
    """

    @nn.compact
    def __call__(self, x):
        """Pools ``(N, H, W, C)`` or ``(N, L, C)`` features into ``(N, C'(C'+1)/2)`` or
        ``(N, C', C')``."""
        _check_rank(x, (3, 4), "CovariancePooling", "(N, L, C) tokens or (N, H, W, C) maps")
        _check_output(self.output, "CovariancePooling")
        x = _reduce_channels(self, x)
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])
        return _pooled_covariance_root(tokens, None, self)


def _reduce_channels(module, x):
    if module.reduced_channels is None:
        return x
    return nn.Dense(
        module.reduced_channels,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        name="reduction",
    )(x)


class SecondOrderViTHead(nn.Module):
    """So-ViT classification head (Xie et al., 2021): class token plus covariance pooling.

    For tokens ``(N, 1 + L, C)`` with the class token first,

        ``logits = Dense(x[:, 0]) + Dense(CovariancePooling(x[:, 1:]))``

    where the covariance pooling of the ``L`` visual tokens (optionally reduced to
    ``reduced_channels``) is power-normalised by :func:`jaxsqrtm.sqrtm`.

    Attributes:
        num_classes: number of output logits.
        reduced_channels: channels of the visual tokens after reduction (``None``: keep).
        compensate: multiply the root by ``sqrt(tr A)`` (see :class:`CovariancePooling`).
        epsilon: ridge added to the trace-normalised covariance.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.
        dtype: computation dtype of the dense layers and output.
        param_dtype: dtype of the parameters.

    Example:
        >>> import jax
        >>> from jaxsqrtm.linen import SecondOrderViTHead
        >>> tokens = jax.random.normal(jax.random.key(0), (4, 17, 32))
        >>> head = SecondOrderViTHead(num_classes=10, reduced_channels=8)
        >>> variables = head.init(jax.random.key(1), tokens)
        >>> head.apply(variables, tokens).shape
        (4, 10)
    """

    num_classes: int
    reduced_channels: int | None = None
    compensate: bool = True
    epsilon: float = 0.0
    method: str | None = None
    sqrtm_options: Mapping[str, Any] | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """Logits ``(N, num_classes)`` from tokens ``(N, 1 + L, C)``, class token first."""
        _check_rank(x, (3,), "SecondOrderViTHead", "(N, 1 + L, C) tokens, class token first")
        if x.shape[1] < 2:
            raise ValueError(
                "SecondOrderViTHead: expected a class token and at least one visual token, "
                f"got shape {tuple(x.shape)}"
            )
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        class_logits = nn.Dense(self.num_classes, name="class_head", **dense)(x[:, 0])
        pooled = CovariancePooling(
            reduced_channels=self.reduced_channels,
            compensate=self.compensate,
            epsilon=self.epsilon,
            method=self.method,
            sqrtm_options=self.sqrtm_options,
            name="covariance_pooling",
            **dense,
        )(x[:, 1:])
        covariance_logits = nn.Dense(self.num_classes, name="covariance_head", **dense)(pooled)
        return class_logits + covariance_logits


class AttentiveCovariancePooling(_CovariancePoolingFields):
    """Covariance pooling of video features with attention over positions and frames.

    For ``(N, T, H, W, C)`` features (optionally reduced to ``C'`` channels), scores
    ``s_{t,p} = x_{t,p} . u`` per position and ``r_t = mean_p(x_{t,p}) . v`` per frame
    give the weights

        ``w_{t,p} = softmax_t(r)_t * softmax_p(s_{t,.})_p``  (summing to 1 over ``T H W``),

    and the weighted covariance ``A = sum w (x - mu)(x - mu)^T``, ``mu = sum w x``, is
    power-normalised as in :class:`CovariancePooling`. The scoring vectors start at zero,
    so at initialisation the layer is plain covariance pooling over all ``T H W``
    positions. The weights ``(N, T, H, W)`` are sown as ``'intermediates'/'attention'``.

    Attributes:
        reduced_channels: channels after the 1x1 reduction (``None``: no reduction).
        output: ``"triu"`` or ``"matrix"`` (see :class:`CovariancePooling`).
        compensate: multiply the root by ``sqrt(tr A)``.
        epsilon: ridge added to the trace-normalised covariance.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.
        dtype: output dtype (default: the dtype of the features).
        param_dtype: dtype of the parameters.

    Example:
        >>> import jax
        >>> from jaxsqrtm.linen import AttentiveCovariancePooling
        >>> video = jax.random.normal(jax.random.key(0), (2, 4, 7, 7, 16))
        >>> layer = AttentiveCovariancePooling(reduced_channels=8)
        >>> variables = layer.init(jax.random.key(1), video)
        >>> layer.apply(variables, video).shape
        (2, 36)
    """

    @nn.compact
    def __call__(self, x):
        """Pools ``(N, T, H, W, C)`` features into ``(N, C'(C'+1)/2)`` or ``(N, C', C')``."""
        _check_rank(x, (5,), "AttentiveCovariancePooling", "(N, T, H, W, C) video features")
        _check_output(self.output, "AttentiveCovariancePooling")
        x = _reduce_channels(self, x)
        score = dict(
            kernel_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=self.param_dtype
        )
        position_scores = nn.Dense(1, name="position_attention", **score)(x)[..., 0]
        frame_scores = nn.Dense(1, name="frame_attention", **score)(x.mean(axis=(2, 3)))[..., 0]
        weights = _space_time_weights(position_scores, frame_scores)
        self.sow("intermediates", "attention", weights)
        n, t, h, w, c = x.shape
        return _pooled_covariance_root(
            x.reshape(n, t * h * w, c), weights.reshape(n, t * h * w), self
        )


def _space_time_weights(position_scores, frame_scores):
    """``softmax_t(r)_t * softmax_{h,w}(s_t)``: ``(N, T, H, W)`` weights summing to 1."""
    scores = _statistics_dtype(position_scores.dtype)
    n, t, h, w = position_scores.shape
    spatial = jax.nn.softmax(position_scores.astype(scores).reshape(n, t, h * w), axis=-1)
    temporal = jax.nn.softmax(frame_scores.astype(scores), axis=-1)
    return (temporal[..., None] * spatial).reshape(n, t, h, w)


def whitening_coloring_transform(
    content,
    style,
    *,
    alpha: float = 1.0,
    eps: float = 1e-5,
    method: str | None = None,
    sqrtm_options: Mapping[str, Any] | None = None,
):
    """Whitening-colouring transform (Li et al., NeurIPS 2017) for style transfer.

    With content features ``f_c`` (mean ``mu_c``, covariance ``S_c``) and style features
    (``mu_s``, ``S_s``) over their spatial positions,

        ``f_cs = (f_c - mu_c) (S_c + eps I)^(-1/2) (S_s + eps I)^(1/2) + mu_s``,
        ``out = alpha f_cs + (1 - alpha) f_c``,

    so that at ``alpha = 1`` the output has the style's mean and (up to ``eps``)
    covariance. The inverse root and root use :func:`jaxsqrtm.inv_sqrtm` and
    :func:`jaxsqrtm.sqrtm` with ``method``; differentiable in both inputs.

    Args:
        content: ``(..., H, W, C)`` features.
        style: ``(..., H', W', C)`` features, leading axes broadcastable with ``content``'s.
        alpha: blend between the stylised (1) and the original (0) content.
        eps: ridge added to both covariances.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.

    Returns:
        Array of the shape of ``content`` (broadcast with ``style``'s leading axes) and the
        dtype of ``content``; computed in at least float32.

    Raises:
        ValueError: features of rank below 3 or different channel counts.

    Example:
        >>> import jax
        >>> from jaxsqrtm.linen import whitening_coloring_transform
        >>> content = jax.random.normal(jax.random.key(0), (16, 16, 3))
        >>> style = 2.0 * jax.random.normal(jax.random.key(1), (8, 8, 3)) + 1.0
        >>> whitening_coloring_transform(content, style, alpha=0.8).shape
        (16, 16, 3)
    """
    content, style = jnp.asarray(content), jnp.asarray(style)
    for name, features in (("content", content), ("style", style)):
        if features.ndim < 3:
            raise ValueError(
                f"whitening_coloring_transform: {name} must have shape (..., H, W, C); "
                f"got shape {tuple(features.shape)}"
            )
    if content.shape[-1] != style.shape[-1]:
        raise ValueError(
            "whitening_coloring_transform: content and style must have the same channels; "
            f"got shapes {tuple(content.shape)} and {tuple(style.shape)}"
        )
    dtype = _statistics_dtype(jnp.result_type(content, style))
    c = content.shape[-1]
    content_tokens = content.astype(dtype).reshape(*content.shape[:-3], -1, c)
    style_tokens = style.astype(dtype).reshape(*style.shape[:-3], -1, c)
    content_mean, content_cov = _weighted_covariance(content_tokens)
    style_mean, style_cov = _weighted_covariance(style_tokens)
    ridge = eps * jnp.eye(c, dtype=dtype)
    roots = dict(method=method, sqrtm_options=sqrtm_options)
    whitening = _matrix_root(content_cov + ridge, inverse=True, **roots)
    coloring = _matrix_root(style_cov + ridge, inverse=False, **roots)
    transform = jnp.matmul(whitening, coloring, precision=_HIGHEST)
    centered = content_tokens - content_mean[..., None, :]
    stylized = jnp.matmul(centered, transform, precision=_HIGHEST) + style_mean[..., None, :]
    blended = alpha * stylized + (1 - alpha) * content_tokens
    shape = blended.shape[:-2] + content.shape[-3:]
    return blended.reshape(shape).astype(content.dtype)
