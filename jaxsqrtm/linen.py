"""Flax linen layers built on :func:`jaxsqrtm.sqrtm` and :func:`jaxsqrtm.inv_sqrtm`.

The five applications of Song, Sebe & Wang (TPAMI 2022):

* :class:`DecorrelatedBatchNorm`: ZCA-whitening batch normalisation over channel groups.
* :class:`CovariancePooling`: global covariance pooling with matrix power normalisation
  (iSQRT-COV style) for feature maps and token sequences.
* :class:`SecondOrderViTHead`: So-ViT head, class token plus covariance-pooled tokens.
* :class:`AttentiveCovariancePooling`: covariance pooling of video features with learned
  attention over positions and frames.
* :func:`whitening_coloring_transform`: WCT for style transfer (it needs no Flax: it is
  :func:`jaxsqrtm.functional.whitening_coloring_transform`, re-exported here).

The same layers for Flax NNX are in :mod:`jaxsqrtm.nnx`; both are thin front-ends over the
Flax-free functions of :mod:`jaxsqrtm.functional`, and compute the same numbers given the
same parameters and statistics.

Every layer takes the root's ``method`` (``None``: the library's default, ``"auto"``) and
a mapping ``sqrtm_options`` of the other keyword arguments of :func:`jaxsqrtm.sqrtm`
(``degree``, ``num_iters``, ``normalization``, ``backward_iters``, ``max_iters``,
``ridge``, ``precision``), which the library validates. The ridge added to a covariance
is called ``epsilon`` everywhere. Statistics are computed in at least float32 whatever
the input dtype.

This module needs Flax (``pip install jaxsqrtm[linen]``); the core package does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxsqrtm import functional
from jaxsqrtm.functional import OUTPUTS

__all__ = [
    "OUTPUTS",
    "AttentiveCovariancePooling",
    "CovariancePooling",
    "DecorrelatedBatchNorm",
    "SecondOrderViTHead",
    "whitening_coloring_transform",
]


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
    The computation is :func:`jaxsqrtm.functional.decorrelated_batch_norm`.

    Conventions follow :class:`flax.linen.BatchNorm`: running ``mean`` (``(C,)``) and
    ``whitening`` (``(C / g, g, g)``, starting at the identity) live in the
    ``'batch_stats'`` collection and are updated as ``r <- momentum r + (1 - momentum) b``
    in training mode (not while initialising); statistics are computed in at least
    float32; ``axis_name``/``axis_index_groups`` average the mean and covariance across
    devices with :func:`jax.lax.pmean` (skipped while initialising; every device must
    hold the same number of samples).

    Groups larger than the rank of what feeds them: a group of ``g`` channels right
    after a layer of rank below ``g`` (e.g. ``g = 16`` after a ``3 x 3`` convolution of
    a 1-channel image, rank <= 9) has a singular covariance. The default ``epsilon``
    (0 with ``"auto"`` and ``"eigh"``) whitens it with the pseudo-inverse root, 0 on
    the null space. The paper's ridge ``epsilon=1e-5`` multiplies the null directions by
    ``1/sqrt(epsilon)`` (~316) instead: harmless in training, where the centred batch
    has no component there, but in evaluation the running statistics (built from
    earlier weights) do, and the accuracy collapses (measured on the digits, 3 seeds,
    both front-ends: 22-51% in evaluation against 97-98% with batch statistics; with
    the default, evaluation at or above training). ``"mpa"``, ``"mtp"`` and ``"ns"``
    have no pseudo-inverse and keep the paper's ``1e-5`` by default; their
    approximations stay bounded at a zero eigenvalue, and on the same model evaluation
    is within 0.3 points of training. Groups no larger than the rank of the input
    (here ``group_size=8``) avoid the question.

    Attributes:
        use_running_average: use the stored statistics instead of the batch's; may be
            given here or at call time, not both.
        group_size: channels per whitened group; must divide the channel count.
        momentum: decay rate of the running statistics.
        epsilon: ridge added to each group covariance (``None``: 0 with ``"auto"`` and
            ``"eigh"``, the paper's ``1e-5`` with ``"mpa"``, ``"mtp"`` and ``"ns"``; see
            :func:`jaxsqrtm.functional.default_whitening_epsilon`).
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
    epsilon: float | None = None
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
        func = "DecorrelatedBatchNorm"
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        x = jnp.asarray(x)
        functional._check_groups(func, x.shape, self.group_size)
        channels = x.shape[-1]
        functional._check_decorrelated_batch_norm(
            func, channels, self.group_size, self.momentum, self.epsilon
        )
        stats_dtype = functional._statistics_dtype(x.dtype)

        def initial(index):
            return lambda: functional.init_decorrelated_batch_norm(
                channels, self.group_size, stats_dtype
            )[index]

        running_mean = self.variable("batch_stats", "mean", initial(0))
        running_whitening = self.variable("batch_stats", "whitening", initial(1))
        scale = bias = None
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)

        initializing = self.is_initializing()
        y, mean, whitening = functional._decorrelated_batch_norm(
            func,
            x,
            running_mean.value,
            running_whitening.value,
            use_running_average=bool(use_running_average),
            scale=scale,
            bias=bias,
            momentum=self.momentum,
            epsilon=self.epsilon,
            method=self.method,
            sqrtm_options=self.sqrtm_options,
            axis_name=None if initializing else self.axis_name,
            axis_index_groups=self.axis_index_groups,
            update_statistics=not initializing,
            dtype=self.dtype,
        )
        if not use_running_average and not initializing:
            running_mean.value = mean
            running_whitening.value = whitening
        return y


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

    def _settings(self) -> dict:
        return dict(
            output=self.output,
            compensate=self.compensate,
            epsilon=self.epsilon,
            method=self.method,
            sqrtm_options=self.sqrtm_options,
            dtype=self.dtype,
        )

    def _reduction(self):
        if self.reduced_channels is None:
            return None
        return nn.Dense(
            self.reduced_channels,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="reduction",
        )


class CovariancePooling(_CovariancePoolingFields):
    """Global covariance pooling with matrix power normalisation (iSQRT-COV style).

    For ``(N, H, W, C)`` feature maps or ``(N, L, C)`` token sequences: an optional
    linear channel reduction to ``C' = reduced_channels`` (a 1x1 convolution, parameters
    ``reduction/kernel`` and ``reduction/bias``), the covariance ``A`` (``C' x C'``) of
    the ``P = H W`` (or ``L``) positions, and

        ``Y = sqrt(tr A) * (A / tr A + epsilon I)^(1/2)``

    (pre-normalisation by the trace, square root by :func:`jaxsqrtm.sqrtm` with the
    chosen ``method``, post-compensation by ``sqrt(tr A)`` when ``compensate``). Output:
    the ``C' (C' + 1) / 2`` upper-triangular entries of ``Y`` (``output="triu"``), or
    ``Y`` itself (``output="matrix"``). The computation is
    :func:`jaxsqrtm.functional.covariance_pooling`.

    Attributes:
        reduced_channels: channels after the 1x1 reduction (``None``: no reduction).
        output: ``"triu"`` (``(N, C' (C' + 1) / 2)``) or ``"matrix"`` (``(N, C', C')``).
        compensate: multiply the root by ``sqrt(tr A)``.
        epsilon: ridge added to the trace-normalised covariance.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.
        dtype: output dtype and computation dtype of the reduction (default: the dtype
            of the features); the covariance and root are computed in at least float32.
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
        return functional._covariance_pooling(
            "CovariancePooling", jnp.asarray(x), reduce=self._reduction(), **self._settings()
        )


class SecondOrderViTHead(nn.Module):
    """So-ViT classification head (Xie et al., 2021): class token plus covariance pooling.

    For tokens ``(N, 1 + L, C)`` with the class token first,

        ``logits = Dense(x[:, 0]) + Dense(CovariancePooling(x[:, 1:]))``

    where the covariance pooling of the ``L`` visual tokens (optionally reduced to
    ``reduced_channels``) is power-normalised by :func:`jaxsqrtm.sqrtm`. Parameters:
    ``class_head``, ``covariance_pooling`` (its ``reduction``) and ``covariance_head``.

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
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        return functional._second_order_vit_head(
            "SecondOrderViTHead",
            jnp.asarray(x),
            class_head=nn.Dense(self.num_classes, name="class_head", **dense),
            pool=CovariancePooling(
                reduced_channels=self.reduced_channels,
                compensate=self.compensate,
                epsilon=self.epsilon,
                method=self.method,
                sqrtm_options=self.sqrtm_options,
                name="covariance_pooling",
                **dense,
            ),
            covariance_head=nn.Dense(self.num_classes, name="covariance_head", **dense),
        )


class AttentiveCovariancePooling(_CovariancePoolingFields):
    """Covariance pooling of video features with attention over positions and frames.

    For ``(N, T, H, W, C)`` features (optionally reduced to ``C'`` channels), scores
    ``s_{t,p} = x_{t,p} . u`` per position and ``r_t = mean_p(x_{t,p}) . v`` per frame
    (``Dense(1)`` layers ``position_attention`` and ``frame_attention``) give the weights

        ``w_{t,p} = softmax_t(r)_t * softmax_p(s_{t,.})_p``  (summing to 1 over ``T H W``),

    and the weighted covariance ``A = sum w (x - mu)(x - mu)^T``, ``mu = sum w x``, is
    power-normalised as in :class:`CovariancePooling`. The scoring vectors start at zero,
    so at initialisation the layer is plain covariance pooling over all ``T H W``
    positions. The weights ``(N, T, H, W)`` are sown as ``'intermediates'/'attention'``.
    The computation is :func:`jaxsqrtm.functional.attentive_covariance_pooling`.

    Attributes:
        reduced_channels: channels after the 1x1 reduction (``None``: no reduction).
        output: ``"triu"`` or ``"matrix"`` (see :class:`CovariancePooling`).
        compensate: multiply the root by ``sqrt(tr A)``.
        epsilon: ridge added to the trace-normalised covariance.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.
        dtype: output dtype and computation dtype of the dense layers (default: the
            dtype of the features).
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
        score = dict(
            kernel_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=self.param_dtype
        )
        pooled, weights = functional._attentive_covariance_pooling(
            "AttentiveCovariancePooling",
            jnp.asarray(x),
            score_positions=nn.Dense(1, name="position_attention", **score),
            score_frames=nn.Dense(1, name="frame_attention", **score),
            reduce=self._reduction(),
            **self._settings(),
        )
        self.sow("intermediates", "attention", weights)
        return pooled


def whitening_coloring_transform(
    content,
    style,
    *,
    alpha: float = 1.0,
    epsilon: float = 1e-5,
    method: str | None = None,
    sqrtm_options: Mapping[str, Any] | None = None,
    eps: float | None = None,
):
    """:func:`jaxsqrtm.functional.whitening_coloring_transform` (no Flax needed there).

    Kept here for existing code; ``eps`` is the former name of ``epsilon`` and is
    deprecated.

    Example:
        >>> import jax
        >>> from jaxsqrtm.linen import whitening_coloring_transform
        >>> content = jax.random.normal(jax.random.key(0), (16, 16, 3))
        >>> style = 2.0 * jax.random.normal(jax.random.key(1), (8, 8, 3)) + 1.0
        >>> whitening_coloring_transform(content, style, alpha=0.8).shape
        (16, 16, 3)
    """
    if eps is not None:
        warnings.warn(
            "whitening_coloring_transform: `eps` is deprecated, use `epsilon`",
            DeprecationWarning,
            stacklevel=2,
        )
        epsilon = eps
    return functional.whitening_coloring_transform(
        content, style, alpha=alpha, epsilon=epsilon, method=method, sqrtm_options=sqrtm_options
    )
