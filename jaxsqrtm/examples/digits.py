"""Training the Flax layers on scikit-learn's 8x8 digits with optax.

Four small models, each trained from scratch on a fixed, stratified train/test split of
``sklearn.datasets.load_digits`` (1797 images, 10 classes, shipped with scikit-learn):

* ``"covariance_cnn"``: two conv/BatchNorm/ReLU blocks and a :class:`CovariancePooling`
  head (iSQRT-COV style) followed by LayerNorm and a linear classifier;
* ``"decorrelated_cnn"``: the same convolutions with :class:`DecorrelatedBatchNorm`
  replacing the first BatchNorm, max-pooled and flattened into a linear classifier;
* ``"batchnorm_cnn"``: the previous model with plain BatchNorm, a baseline;
* ``"so_vit"``: a one-block transformer over 2x2 patches with a
  :class:`SecondOrderViTHead`.

Example:
    >>> from jaxsqrtm.examples.digits import train_digits
    >>> result = train_digits("covariance_cnn", method="mpa", epochs=1)  # doctest: +SKIP
    >>> sorted(result)  # doctest: +SKIP
    ['accuracy', 'compile_seconds', 'cpu_seconds', 'curve', 'seconds']
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsqrtm
from jaxsqrtm.linen import CovariancePooling, DecorrelatedBatchNorm, SecondOrderViTHead

MODELS = ("covariance_cnn", "decorrelated_cnn", "batchnorm_cnn", "so_vit")
NUM_CLASSES = 10
_MOMENTUM = 0.9


def load_digits_split(test_fraction: float = 0.2, seed: int = 0):
    """The digits as ``(N, 8, 8, 1)`` float32 images in ``[0, 1]`` and int32 labels.

    Returns:
        ``(x_train, y_train, x_test, y_test)``, a stratified split fixed by ``seed``
        (1437 training and 360 test images for the defaults).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return x_train, y_train, x_test, y_test


class _ConvBlock(nn.Module):
    """3x3 convolution, normalisation (BatchNorm or the given module), ReLU."""

    features: int
    norm: Any = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.features, (3, 3), use_bias=False)(x)
        norm = self.norm or nn.BatchNorm(momentum=_MOMENTUM)
        return nn.relu(norm(x, use_running_average=not train))


class CovarianceCNN(nn.Module):
    """Conv(32) - Conv(64) - :class:`CovariancePooling` (to 16 channels) - LayerNorm - Dense(10).

    The LayerNorm rescales the 136 pooled features, whose magnitude depends on the
    covariance's, so that the classifier trains at the convolutions' pace.
    """

    method: str | None = None
    sqrtm_options: Mapping[str, Any] | None = None
    reduced_channels: int = 16

    @nn.compact
    def __call__(self, x, train: bool):
        x = _ConvBlock(32)(x, train)
        x = _ConvBlock(64)(x, train)
        x = CovariancePooling(
            reduced_channels=self.reduced_channels,
            method=self.method,
            sqrtm_options=self.sqrtm_options,
        )(x)
        return nn.Dense(NUM_CLASSES)(nn.LayerNorm()(x))


class DecorrelatedCNN(nn.Module):
    """Conv(32) - first normalisation - Conv(64) - BatchNorm - max-pool - Dense(10).

    The first normalisation is :class:`DecorrelatedBatchNorm` (groups of
    ``group_size``), or plain BatchNorm when ``decorrelated`` is false.
    """

    method: str | None = None
    sqrtm_options: Mapping[str, Any] | None = None
    decorrelated: bool = True
    group_size: int = 16

    @nn.compact
    def __call__(self, x, train: bool):
        first_norm = None
        if self.decorrelated:
            first_norm = DecorrelatedBatchNorm(
                group_size=self.group_size,
                momentum=_MOMENTUM,
                method=self.method,
                sqrtm_options=self.sqrtm_options,
            )
        x = _ConvBlock(32, norm=first_norm)(x, train)
        x = _ConvBlock(64)(x, train)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


class TokenTransformer(nn.Module):
    """2x2 patches as 16 tokens, one pre-norm transformer block, So-ViT head."""

    method: str | None = None
    sqrtm_options: Mapping[str, Any] | None = None
    width: int = 32
    num_heads: int = 4
    reduced_channels: int = 16

    @nn.compact
    def __call__(self, x, train: bool):
        del train
        n = x.shape[0]
        patches = x.reshape(n, 4, 2, 4, 2, 1).transpose(0, 1, 3, 2, 4, 5).reshape(n, 16, 4)
        tokens = nn.Dense(self.width)(patches)
        tokens = tokens + self.param("position", nn.initializers.normal(0.02), (1, 16, self.width))
        class_token = self.param("class_token", nn.initializers.zeros, (1, 1, self.width))
        tokens = jnp.concatenate([jnp.broadcast_to(class_token, (n, 1, self.width)), tokens], 1)
        tokens = tokens + nn.MultiHeadDotProductAttention(self.num_heads)(nn.LayerNorm()(tokens))
        hidden = nn.gelu(nn.Dense(2 * self.width)(nn.LayerNorm()(tokens)))
        tokens = tokens + nn.Dense(self.width)(hidden)
        return SecondOrderViTHead(
            NUM_CLASSES,
            reduced_channels=self.reduced_channels,
            method=self.method,
            sqrtm_options=self.sqrtm_options,
        )(nn.LayerNorm()(tokens))


def make_model(
    model_name: str, method: str | None = None, sqrtm_options: Mapping | None = None
) -> nn.Module:
    """One of :data:`MODELS` with the given root method and knobs."""
    roots = dict(method=method, sqrtm_options=sqrtm_options)
    if model_name == "covariance_cnn":
        return CovarianceCNN(**roots)
    if model_name == "decorrelated_cnn":
        return DecorrelatedCNN(**roots)
    if model_name == "batchnorm_cnn":
        return DecorrelatedCNN(decorrelated=False)
    if model_name == "so_vit":
        return TokenTransformer(**roots)
    raise ValueError(f"model_name must be one of {MODELS}, got {model_name!r}")


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _make_steps(model, optimizer):
    """Jitted ``train_step(state, x, y) -> (state, loss)`` and ``predict(state, x)``."""

    @jax.jit
    def train_step(state, images, labels):
        params, batch_stats, opt_state = state

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            return _cross_entropy(logits, labels), updates.get("batch_stats", batch_stats)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats, opt_state), loss

    @jax.jit
    def predict(state, images):
        params, batch_stats, _ = state
        logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
        return jnp.argmax(logits, axis=-1)

    return train_step, predict


def train_digits(
    model_name: str,
    method: str | None = None,
    epochs: int = 8,
    seed: int = 0,
    *,
    sqrtm_options: Mapping | None = None,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
) -> dict:
    """Train one of :data:`MODELS` on the digits with Adam and a cosine schedule.

    The split is fixed (:func:`load_digits_split` with seed 0); ``seed`` sets the
    initialisation and the shuffling. Incomplete batches are dropped, so the train step
    compiles once.

    Args:
        model_name: one of :data:`MODELS`.
        method: root method of the layer (``None``: the library's default).
        epochs: passes over the 1437 training images.
        seed: initialisation and shuffling seed.
        sqrtm_options: other keyword arguments of :func:`jaxsqrtm.sqrtm`.
        batch_size: images per step.
        learning_rate: peak Adam learning rate.

    Returns:
        ``dict(accuracy, seconds, cpu_seconds, compile_seconds, curve)``: final test
        accuracy, wall-clock and process CPU seconds of all training steps (compilation
        included; CPU seconds sum over threads and are less sensitive to other work on
        the machine), wall-clock seconds of the first step (mostly compilation), and per
        epoch
        ``dict(epoch, loss, accuracy)`` with the mean training loss and the test accuracy.
    """
    x_train, y_train, x_test, y_test = load_digits_split()
    model = make_model(model_name, method, sqrtm_options)
    steps_per_epoch = len(x_train) // batch_size
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch))
    init_key, shuffle_seed = jax.random.key(seed), np.random.default_rng(seed)
    variables = jax.jit(functools.partial(model.init, train=False))(init_key, x_train[:batch_size])
    params = variables["params"]
    state = (params, variables.get("batch_stats", {}), optimizer.init(params))
    train_step, predict = _make_steps(model, optimizer)

    curve, seconds, cpu_seconds, compile_seconds = [], 0.0, 0.0, None
    for epoch in range(1, epochs + 1):
        order = shuffle_seed.permutation(len(x_train))
        losses = []
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(steps_per_epoch):
            batch = order[i * batch_size : (i + 1) * batch_size]
            state, loss = train_step(state, x_train[batch], y_train[batch])
            if compile_seconds is None:
                jax.block_until_ready(loss)
                compile_seconds = time.perf_counter() - start
            losses.append(loss)
        losses = np.asarray(jax.block_until_ready(losses))
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        accuracy = float(np.mean(np.asarray(predict(state, x_test)) == y_test))
        curve.append(dict(epoch=epoch, loss=float(losses.mean()), accuracy=accuracy))
    return dict(
        accuracy=curve[-1]["accuracy"],
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        compile_seconds=compile_seconds,
        curve=curve,
    )


def method_table(
    model_names=("covariance_cnn", "decorrelated_cnn"),
    methods=jaxsqrtm.METHODS,
    epochs: int = 8,
    seed: int = 0,
    repeats: int = 1,
) -> list[dict]:
    """:func:`train_digits` for every model and root method.

    Args:
        model_names: models from :data:`MODELS`.
        methods: root methods; ``"batchnorm_cnn"`` ignores them and runs once.
        epochs: training epochs.
        seed: initialisation and shuffling seed.
        repeats: runs per entry; the fastest is kept (the accuracy does not change), which
            discounts other work on a shared machine.

    Returns:
        One ``dict(model, method, accuracy, seconds, cpu_seconds, compile_seconds)`` per
        entry.
    """
    rows = []
    for model_name in model_names:
        for method in (None,) if model_name == "batchnorm_cnn" else methods:
            runs = [train_digits(model_name, method, epochs, seed) for _ in range(repeats)]
            fastest = min(runs, key=lambda run: run["seconds"])
            rows.append(
                dict(
                    model=model_name,
                    method=method,
                    accuracy=fastest["accuracy"],
                    seconds=fastest["seconds"],
                    cpu_seconds=fastest["cpu_seconds"],
                    compile_seconds=fastest["compile_seconds"],
                )
            )
    return rows


def main() -> None:
    """Print :func:`method_table` (both CNNs and the BatchNorm baseline) as Markdown."""
    epochs = 8
    steps = epochs * (len(load_digits_split()[0]) // 64)
    print(f"{epochs} epochs of {steps // epochs} steps (batch 64)\n")
    print("| model | method | test accuracy | training s | CPU s | first step s |")
    print("|---|---|---|---|---|---|")
    models = ("covariance_cnn", "decorrelated_cnn", "batchnorm_cnn")
    for row in method_table(models, epochs=epochs, repeats=2):
        print(
            f"| {row['model']} | {row['method'] or '-'} | {100 * row['accuracy']:.1f}% "
            f"| {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['compile_seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
