"""Flax NNX layers built on :func:`jaxsqrtm.sqrtm` and :func:`jaxsqrtm.inv_sqrtm`.

The layers of :mod:`jaxsqrtm.linen`, native to Flax NNX: parameters and running
statistics are created eagerly from ``num_features`` and ``rngs``, running statistics are
:class:`flax.nnx.BatchStat` variables, and training or evaluation mode follows
``model.train()`` / ``model.eval()`` and ``nnx.view(model, use_running_average=...)``, as
for :class:`flax.nnx.BatchNorm`.

* :class:`DecorrelatedBatchNorm`: ZCA-whitening batch normalisation over channel groups.
* :class:`CovariancePooling`: global covariance pooling with matrix power normalisation
  (iSQRT-COV style) for feature maps and token sequences.
* :class:`SecondOrderViTHead`: So-ViT head, class token plus covariance-pooled tokens.
* :class:`AttentiveCovariancePooling`: covariance pooling of video features with learned
  attention over positions and frames.

Both front-ends call the Flax-free functions of :mod:`jaxsqrtm.functional` for all their
computation, so an NNX layer and a linen layer with the same parameters and statistics
give the same numbers; the parameter and statistic names are the same too (a linen
``variables["params"]`` and ``variables["batch_stats"]`` map one to one onto
``nnx.state(model)``, see :func:`load_linen_variables`). The whitening-colouring transform
needs no layer: :func:`jaxsqrtm.functional.whitening_coloring_transform`.

Every layer takes the root's ``method`` (``None``: the library's default, ``"auto"``) and
a mapping ``sqrtm_options`` of the other keyword arguments of :func:`jaxsqrtm.sqrtm`
(``degree``, ``num_iters``, ``normalization``, ``backward_iters``, ``max_iters``,
``ridge``, ``precision``), which the library validates. Statistics are computed in at
least float32 whatever the input dtype.

This module needs Flax 0.12 or later (``pip install jaxsqrtm[linen]``); the core package
does not import Flax.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import initializers

from jaxsqrtm import _validation, functional
from jaxsqrtm.functional import OUTPUTS

__all__ = [
    "OUTPUTS",
    "AttentiveCovariancePooling",
    "CovariancePooling",
    "DecorrelatedBatchNorm",
    "SecondOrderViTHead",
    "load_linen_variables",
]

_NO_METADATA = MappingProxyType({})
_ZEROS = initializers.zeros_init()
_ONES = initializers.ones_init()


def _check_features(func: str, x, num_features: int) -> None:
    if x.ndim < 1 or x.shape[-1] != num_features:
        raise ValueError(
            f"{func}: x must have num_features={num_features} channels in its last axis, "
            f"got shape {tuple(x.shape)}"
        )


def _check_optional_count(func: str, name: str, value):
    return None if value is None else _validation.check_count(func, name, value)


def _require_rngs(func: str, rngs, why: str):
    if rngs is None:
        raise ValueError(f"{func}: rngs must be an nnx.Rngs ({why}), got None")
    return rngs


class DecorrelatedBatchNorm(nnx.Module):
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

    Conventions follow :class:`flax.nnx.BatchNorm`: the running ``mean`` (``(C,)``) and
    ``whitening`` (``(C / g, g, g)``, starting at zero and the identity) are
    :class:`flax.nnx.BatchStat` variables, updated as
    ``r <- momentum r + (1 - momentum) b`` on every call in training mode;
    ``use_running_average`` is set by ``model.train()`` / ``model.eval()``,
    ``nnx.view(model, use_running_average=...)``, or the call (which takes
    precedence); ``axis_name``/``axis_index_groups`` average the mean and covariance
    across devices with :func:`jax.lax.pmean` (every device must hold the same number of
    samples); ``scale_metadata``/``bias_metadata`` (e.g. ``{"out_sharding": ("model",)}``)
    annotate the parameters for sharding.

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

    Args:
        num_features: number of channels ``C``.
        group_size: channels per whitened group; must divide ``num_features``.
        use_running_average: use the stored statistics instead of the batch's.
        momentum: decay rate of the running statistics.
        epsilon: ridge added to each group covariance (``None``: 0 with ``"auto"`` and
            ``"eigh"``, the paper's ``1e-5`` with ``"mpa"``, ``"mtp"`` and ``"ns"``; see
            :func:`jaxsqrtm.functional.default_whitening_epsilon`).
        dtype: output dtype (default: from the input and parameters).
        param_dtype: dtype of ``scale`` and ``bias``; the running statistics are
            float32, or float64 when ``param_dtype`` is.
        use_bias: add a learnable per-channel ``bias``.
        use_scale: multiply by a learnable per-channel ``scale``.
        bias_init: initialiser of ``bias``.
        scale_init: initialiser of ``scale``.
        axis_name: named axis over which to average statistics (``shard_map``,
            ``pmap``, ``nnx.vmap``).
        axis_index_groups: groups of indices of ``axis_name`` to average within.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.inv_sqrtm`.
        rngs: random keys for the parameter initialisers.
        bias_metadata: metadata of the ``bias`` parameter (e.g. sharding).
        scale_metadata: metadata of the ``scale`` parameter.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxsqrtm.nnx import DecorrelatedBatchNorm
        >>> layer = DecorrelatedBatchNorm(8, group_size=4, momentum=0.9, rngs=nnx.Rngs(0))
        >>> jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(layer, nnx.BatchStat)))
        {'mean': (8,), 'whitening': (2, 4, 4)}
        >>> x = jax.random.normal(jax.random.key(0), (32, 8))
        >>> y = layer(x)  # training mode: whitens with the batch, updates the statistics
        >>> layer.eval()
        >>> layer(x[:3]).shape  # evaluation mode: the running statistics
        (3, 8)
    """

    def __init__(
        self,
        num_features: int,
        *,
        group_size: int = 16,
        use_running_average: bool | None = False,
        momentum: float = 0.99,
        epsilon: float | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = _ZEROS,
        scale_init: Any = _ONES,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        method: str | None = None,
        sqrtm_options: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
        scale_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        func = "DecorrelatedBatchNorm"
        functional._check_decorrelated_batch_norm(func, num_features, group_size, momentum, epsilon)
        stats_dtype = functional._statistics_dtype(param_dtype)
        mean, whitening = functional.init_decorrelated_batch_norm(
            num_features, group_size, stats_dtype
        )
        self.mean = nnx.BatchStat(mean)
        self.whitening = nnx.BatchStat(whitening)
        shape = (num_features,)
        self.scale: nnx.Param | None
        if use_scale:
            init = scale_init(rngs.params(), shape, param_dtype)
            self.scale = nnx.Param(init, **scale_metadata)
        else:
            self.scale = nnx.data(None)
        self.bias: nnx.Param | None
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata)
        else:
            self.bias = nnx.data(None)

        self.num_features = num_features
        self.group_size = group_size
        self.use_running_average = use_running_average
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.method = method
        self.sqrtm_options = None if sqrtm_options is None else dict(sqrtm_options)

    def __call__(self, x, use_running_average: bool | None = None):
        """Whitens ``x`` of shape ``(..., C)`` (e.g. ``(N, C)``, ``(N, H, W, C)``,
        ``(N, T, H, W, C)``); returns the same shape. ``use_running_average`` given here
        takes precedence over the attribute."""
        func = "DecorrelatedBatchNorm"
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average is None:
            raise ValueError(
                f"{func}: use_running_average must be set, got None: pass it to the "
                "constructor or the call, call model.train() or model.eval(), or use "
                "nnx.view(model, use_running_average=...)"
            )
        x = jnp.asarray(x)
        _check_features(func, x, self.num_features)
        y, mean, whitening = functional._decorrelated_batch_norm(
            func,
            x,
            self.mean[...],
            self.whitening[...],
            use_running_average=bool(use_running_average),
            scale=None if self.scale is None else self.scale[...],
            bias=None if self.bias is None else self.bias[...],
            momentum=self.momentum,
            epsilon=self.epsilon,
            method=self.method,
            sqrtm_options=self.sqrtm_options,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            update_statistics=True,
            dtype=self.dtype,
        )
        if not use_running_average:
            self.mean[...] = mean
            self.whitening[...] = whitening
        return y

    def set_view(self, use_running_average: bool | None = None):
        """Used by ``nnx.view``: sets ``use_running_average`` when given."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


class _CovariancePoolingBase(nnx.Module):
    """Reduction and settings shared by the covariance-pooling layers."""

    def _init_pooling(
        self,
        func,
        num_features,
        *,
        reduced_channels,
        output,
        compensate,
        epsilon,
        method,
        sqrtm_options,
        dtype,
        param_dtype,
        rngs,
        kernel_metadata,
        bias_metadata,
    ) -> int:
        """Validates the settings, creates ``reduction``; returns the pooled channels."""
        num_features = _validation.check_count(func, "num_features", num_features)
        reduced_channels = _check_optional_count(func, "reduced_channels", reduced_channels)
        self.num_features = num_features
        self.reduced_channels = reduced_channels
        self.output = _validation.check_choice(func, "output", output, OUTPUTS)
        self.compensate = _validation.check_bool(func, "compensate", compensate)
        self.epsilon = functional._check_epsilon(func, epsilon)
        self.method = method
        self.sqrtm_options = None if sqrtm_options is None else dict(sqrtm_options)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.reduction: nnx.Linear | None
        if reduced_channels is None:
            self.reduction = nnx.data(None)
            return num_features
        self.reduction = nnx.Linear(
            num_features,
            reduced_channels,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=_require_rngs(func, rngs, "the reduction has parameters"),
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
        return reduced_channels

    def _settings(self) -> dict:
        return dict(
            output=self.output,
            compensate=self.compensate,
            epsilon=self.epsilon,
            method=self.method,
            sqrtm_options=self.sqrtm_options,
            dtype=self.dtype,
        )


class CovariancePooling(_CovariancePoolingBase):
    """Global covariance pooling with matrix power normalisation (iSQRT-COV style).

    For ``(N, H, W, C)`` feature maps or ``(N, L, C)`` token sequences: an optional
    linear channel reduction to ``C' = reduced_channels`` (a 1x1 convolution, the
    :class:`flax.nnx.Linear` ``reduction``), the covariance ``A`` (``C' x C'``) of the
    ``P = H W`` (or ``L``) positions, and

        ``Y = sqrt(tr A) * (A / tr A + epsilon I)^(1/2)``

    (pre-normalisation by the trace, square root by :func:`jaxsqrtm.sqrtm` with the
    chosen ``method``, post-compensation by ``sqrt(tr A)`` when ``compensate``). Output:
    the ``C' (C' + 1) / 2`` upper-triangular entries of ``Y`` (``output="triu"``), or
    ``Y`` itself (``output="matrix"``). The computation is
    :func:`jaxsqrtm.functional.covariance_pooling`.

    Args:
        num_features: input channels ``C``.
        reduced_channels: channels after the 1x1 reduction (``None``: no reduction).
        output: ``"triu"`` (``(N, C' (C' + 1) / 2)``) or ``"matrix"`` (``(N, C', C')``).
        compensate: multiply the root by ``sqrt(tr A)``.
        epsilon: ridge added to the trace-normalised covariance.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.
        dtype: output dtype and computation dtype of the reduction (default: the dtype
            of the features); the covariance and root are computed in at least float32.
        param_dtype: dtype of the reduction's parameters.
        rngs: random keys for the reduction (needed only with ``reduced_channels``).
        kernel_metadata: metadata of the reduction's kernel (e.g. sharding).
        bias_metadata: metadata of the reduction's bias.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from jaxsqrtm.nnx import CovariancePooling
        >>> x = jax.random.normal(jax.random.key(0), (2, 7, 7, 32))
        >>> layer = CovariancePooling(32, reduced_channels=8, rngs=nnx.Rngs(0))
        >>> layer(x).shape
        (2, 36)
    """

    def __init__(
        self,
        num_features: int,
        *,
        reduced_channels: int | None = None,
        output: str = "triu",
        compensate: bool = True,
        epsilon: float = 0.0,
        method: str | None = None,
        sqrtm_options: Mapping[str, Any] | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        self._init_pooling(
            "CovariancePooling",
            num_features,
            reduced_channels=reduced_channels,
            output=output,
            compensate=compensate,
            epsilon=epsilon,
            method=method,
            sqrtm_options=sqrtm_options,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )

    def __call__(self, x):
        """Pools ``(N, H, W, C)`` or ``(N, L, C)`` features into ``(N, C'(C'+1)/2)`` or
        ``(N, C', C')``."""
        func = "CovariancePooling"
        x = jnp.asarray(x)
        _check_features(func, x, self.num_features)
        return functional._covariance_pooling(func, x, reduce=self.reduction, **self._settings())


class SecondOrderViTHead(nnx.Module):
    """So-ViT classification head (Xie et al., 2021): class token plus covariance pooling.

    For tokens ``(N, 1 + L, C)`` with the class token first,

        ``logits = class_head(x[:, 0]) + covariance_head(covariance_pooling(x[:, 1:]))``

    with :class:`flax.nnx.Linear` heads and a :class:`CovariancePooling` of the ``L``
    visual tokens (optionally reduced to ``reduced_channels``), power-normalised by
    :func:`jaxsqrtm.sqrtm`.

    Args:
        num_features: token channels ``C``.
        num_classes: number of output logits.
        reduced_channels: channels of the visual tokens after reduction (``None``: keep).
        compensate: multiply the root by ``sqrt(tr A)`` (see :class:`CovariancePooling`).
        epsilon: ridge added to the trace-normalised covariance.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.
        dtype: computation dtype of the linear layers and output.
        param_dtype: dtype of the parameters.
        rngs: random keys for the parameters.
        kernel_metadata: metadata of every kernel (the heads' and the reduction's).
        bias_metadata: metadata of every bias.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from jaxsqrtm.nnx import SecondOrderViTHead
        >>> tokens = jax.random.normal(jax.random.key(0), (4, 17, 32))
        >>> head = SecondOrderViTHead(32, 10, reduced_channels=8, rngs=nnx.Rngs(0))
        >>> head(tokens).shape
        (4, 10)
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        *,
        reduced_channels: int | None = None,
        compensate: bool = True,
        epsilon: float = 0.0,
        method: str | None = None,
        sqrtm_options: Mapping[str, Any] | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        func = "SecondOrderViTHead"
        num_features = _validation.check_count(func, "num_features", num_features)
        num_classes = _validation.check_count(func, "num_classes", num_classes)
        linear = dict(
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
        self.num_features = num_features
        self.num_classes = num_classes
        self.class_head = nnx.Linear(num_features, num_classes, **linear)
        self.covariance_pooling = CovariancePooling(
            num_features,
            reduced_channels=reduced_channels,
            compensate=compensate,
            epsilon=epsilon,
            method=method,
            sqrtm_options=sqrtm_options,
            **linear,
        )
        pooled = reduced_channels or num_features
        self.covariance_head = nnx.Linear(pooled * (pooled + 1) // 2, num_classes, **linear)

    def __call__(self, x):
        """Logits ``(N, num_classes)`` from tokens ``(N, 1 + L, C)``, class token first."""
        func = "SecondOrderViTHead"
        x = jnp.asarray(x)
        _check_features(func, x, self.num_features)
        return functional._second_order_vit_head(
            func,
            x,
            class_head=self.class_head,
            pool=self.covariance_pooling,
            covariance_head=self.covariance_head,
        )


class AttentiveCovariancePooling(_CovariancePoolingBase):
    """Covariance pooling of video features with attention over positions and frames.

    For ``(N, T, H, W, C)`` features (optionally reduced to ``C'`` channels), scores
    ``s_{t,p} = x_{t,p} . u`` per position and ``r_t = mean_p(x_{t,p}) . v`` per frame
    (:class:`flax.nnx.Linear` layers ``position_attention`` and ``frame_attention`` with
    one output) give the weights

        ``w_{t,p} = softmax_t(r)_t * softmax_p(s_{t,.})_p``  (summing to 1 over ``T H W``),

    and the weighted covariance ``A = sum w (x - mu)(x - mu)^T``, ``mu = sum w x``, is
    power-normalised as in :class:`CovariancePooling`. The scoring vectors start at zero,
    so at initialisation the layer is plain covariance pooling over all ``T H W``
    positions. With ``sow_weights=True`` the weights ``(N, T, H, W)`` are sown as the
    :class:`flax.nnx.Intermediate` ``"attention"`` (collect them with
    ``nnx.capture(model, nnx.Intermediate)``), as :class:`flax.nnx.MultiHeadAttention`
    does with its ``sow_weights``. The computation is
    :func:`jaxsqrtm.functional.attentive_covariance_pooling`.

    Args:
        num_features: input channels ``C``.
        reduced_channels: channels after the 1x1 reduction (``None``: no reduction).
        output: ``"triu"`` or ``"matrix"`` (see :class:`CovariancePooling`).
        compensate: multiply the root by ``sqrt(tr A)``.
        epsilon: ridge added to the trace-normalised covariance.
        method: root method (``None``: the library's default).
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.
        dtype: output dtype and computation dtype of the linear layers (default: the
            dtype of the features).
        param_dtype: dtype of the parameters.
        sow_weights: sow the attention weights.
        rngs: random keys for the parameters.
        kernel_metadata: metadata of every kernel (the scores' and the reduction's).
        bias_metadata: metadata of every bias.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from jaxsqrtm.nnx import AttentiveCovariancePooling
        >>> video = jax.random.normal(jax.random.key(0), (2, 4, 7, 7, 16))
        >>> layer = AttentiveCovariancePooling(16, reduced_channels=8, rngs=nnx.Rngs(0))
        >>> layer(video).shape
        (2, 36)
    """

    def __init__(
        self,
        num_features: int,
        *,
        reduced_channels: int | None = None,
        output: str = "triu",
        compensate: bool = True,
        epsilon: float = 0.0,
        method: str | None = None,
        sqrtm_options: Mapping[str, Any] | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        sow_weights: bool = False,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        func = "AttentiveCovariancePooling"
        pooled = self._init_pooling(
            func,
            num_features,
            reduced_channels=reduced_channels,
            output=output,
            compensate=compensate,
            epsilon=epsilon,
            method=method,
            sqrtm_options=sqrtm_options,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
        score = dict(
            kernel_init=_ZEROS,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
        self.position_attention = nnx.Linear(pooled, 1, **score)
        self.frame_attention = nnx.Linear(pooled, 1, **score)
        self.sow_weights = _validation.check_bool(func, "sow_weights", sow_weights)

    def __call__(self, x):
        """Pools ``(N, T, H, W, C)`` features into ``(N, C'(C'+1)/2)`` or ``(N, C', C')``."""
        func = "AttentiveCovariancePooling"
        x = jnp.asarray(x)
        _check_features(func, x, self.num_features)
        pooled, weights = functional._attentive_covariance_pooling(
            func,
            x,
            score_positions=self.position_attention,
            score_frames=self.frame_attention,
            reduce=self.reduction,
            **self._settings(),
        )
        if self.sow_weights:
            self.sow(nnx.Intermediate, "attention", weights)
        return pooled


def _flat(tree: Mapping, prefix: tuple = ()) -> dict:
    """``{path: leaf}`` of a nested mapping; empty mappings have no leaves."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def _nested(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def load_linen_variables(model: nnx.Module, variables: Mapping[str, Any]) -> None:
    """Copies the variables of the matching :mod:`jaxsqrtm.linen` model into ``model``.

    The layers of both front-ends name their parameters and statistics alike, so the
    ``"params"`` and ``"batch_stats"`` collections of a linen model's variables (as
    ``model.init`` or a training loop returns them) are merged into one nested mapping
    and written into ``model``'s :class:`flax.nnx.Param` and :class:`flax.nnx.BatchStat`
    variables, in place. Works for any NNX model whose attribute names match the linen
    model's module names (e.g. ``Dense_0`` for a linen ``nn.Dense`` named by default);
    other collections are ignored. Every variable of ``model`` must be given, and no
    other.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxsqrtm import linen, nnx as jnnx
        >>> x = jax.random.normal(jax.random.key(0), (32, 8))
        >>> variables = linen.DecorrelatedBatchNorm(group_size=4).init(
        ...     jax.random.key(1), x, use_running_average=False
        ... )
        >>> model = jnnx.DecorrelatedBatchNorm(8, group_size=4, rngs=nnx.Rngs(0))
        >>> jnnx.load_linen_variables(model, variables)
    """
    func = "load_linen_variables"
    given: dict = {}
    for collection in ("params", "batch_stats"):
        given.update(_flat(variables.get(collection, {})))
    state = nnx.state(model, nnx.Param, nnx.BatchStat)
    state = nnx.merge_state(*state) if isinstance(state, tuple) else state
    expected = _flat(nnx.to_pure_dict(state))
    if set(given) != set(expected):
        missing = sorted("/".join(map(str, p)) for p in set(expected) - set(given))
        extra = sorted("/".join(map(str, p)) for p in set(given) - set(expected))
        raise ValueError(
            f"{func}: variables must hold exactly the model's parameters and statistics, "
            f"got missing {missing} and unexpected {extra}"
        )
    for path, value in given.items():
        if jnp.shape(value) != jnp.shape(expected[path]):
            raise ValueError(
                f"{func}: {'/'.join(map(str, path))} must have shape "
                f"{jnp.shape(expected[path])}, got {jnp.shape(value)}"
            )
    nnx.replace_by_pure_dict(state, _nested(given))
    nnx.update(model, state)
