"""Comparing optax optimisers on scikit-learn's 8x8 digits with small plain-JAX models.

Any :class:`optax.GradientTransformation` trains one of two models from scratch on the
fixed stratified split of :func:`jaxsqrtm.examples.digits.load_digits_split` (1437
training and 360 test images):

* ``"mlp"``: ``64 - hidden - hidden - 10``, ReLU; three weight matrices and three biases;
* ``"cnn"``: two 3x3 convolutions (``hidden // 4`` and ``hidden // 2`` channels, the
  second with stride 2), ReLU, and a linear classifier on the ``4 x 4`` maps; two
  convolution kernels ``(3, 3, in, out)``, one matrix and three biases.

The parameters are a plain dict, ``{layer: {"kernel": ..., "bias": ...}}``;
:func:`muon_dimension_numbers` gives the :class:`optax.contrib.MuonDimensionNumbers`
that treat the convolution kernels as ``(3 * 3 * in) x out`` matrices. A whole run (every
epoch, shuffling included) is one jitted :func:`jax.lax.scan`, compiled once for all
seeds.

Example:
    >>> import optax
    >>> from jaxsqrtm.examples.optimisers import summary, train
    >>> result = train(optax.adamw(3e-3), epochs=2, seeds=(0, 1))  # doctest: +SKIP
    >>> summary(result)["test_accuracy"]  # doctest: +SKIP
    (0.93, 0.004)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

from jaxsqrtm.examples.digits import NUM_CLASSES, load_digits_split

MODELS = ("mlp", "cnn")
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
OptimizerOrFactory = optax.GradientTransformation | Callable[[int], optax.GradientTransformation]
_CONV = ("NHWC", "HWIO", "NHWC")


def _dense(key, fan_in, fan_out, gain=2.0):
    kernel = jax.random.normal(key, (fan_in, fan_out), jnp.float32) * float(np.sqrt(gain / fan_in))
    return {"kernel": kernel, "bias": jnp.zeros(fan_out, jnp.float32)}


def _conv(key, c_in, c_out):
    shape = (3, 3, c_in, c_out)
    kernel = jax.random.normal(key, shape, jnp.float32) * float(np.sqrt(2.0 / (9 * c_in)))
    return {"kernel": kernel, "bias": jnp.zeros(c_out, jnp.float32)}


def init_params(model: str, key, *, hidden: int = 64) -> dict:
    """He-initialised parameters of ``model`` (one of :data:`MODELS`), zero biases."""
    keys = jax.random.split(key, 3)
    if model == "mlp":
        return {
            "dense_0": _dense(keys[0], 64, hidden),
            "dense_1": _dense(keys[1], hidden, hidden),
            "output": _dense(keys[2], hidden, NUM_CLASSES, gain=1.0),
        }
    if model == "cnn":
        c1, c2 = max(hidden // 4, 1), max(hidden // 2, 1)
        return {
            "conv_0": _conv(keys[0], 1, c1),
            "conv_1": _conv(keys[1], c1, c2),
            "output": _dense(keys[2], 16 * c2, NUM_CLASSES, gain=1.0),
        }
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def apply(model: str, params: dict, images) -> jax.Array:
    """Logits ``(N, 10)`` of ``(N, 8, 8, 1)`` images."""
    hi = jax.lax.Precision.HIGHEST
    if model == "mlp":
        x = images.reshape(images.shape[0], -1)
        for name in ("dense_0", "dense_1"):
            x = jax.nn.relu(jnp.dot(x, params[name]["kernel"], precision=hi) + params[name]["bias"])
    else:
        x = images
        for name, stride in (("conv_0", 1), ("conv_1", 2)):
            x = jax.lax.conv_general_dilated(
                x,
                params[name]["kernel"],
                (stride, stride),
                "SAME",
                dimension_numbers=_CONV,
                precision=hi,
            )
            x = jax.nn.relu(x + params[name]["bias"])
        x = x.reshape(x.shape[0], -1)
    return jnp.dot(x, params["output"]["kernel"], precision=hi) + params["output"]["bias"]


def muon_dimension_numbers(params) -> dict:
    """Muon's dimension numbers for these models' parameters: ``(in, out)`` kernels as they
    are, convolution kernels ``(3, 3, in, out)`` as ``(3 * 3 * in) x out`` matrices,
    ``None`` (AdamW) for biases. Works on parameters or updates of any such dict."""

    def spec(x):
        if jnp.ndim(x) == 2:
            return MuonDimensionNumbers(reduction_axis=0, output_axis=1)
        if jnp.ndim(x) == 4:
            return MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
        return None

    return jax.tree.map(spec, params)


def _loss_and_accuracy(model, params, images, labels):
    logits = apply(model, params, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def steps_per_epoch(batch_size: int) -> int:
    """Training steps an epoch (the incomplete last batch is dropped)."""
    return len(load_digits_split()[0]) // batch_size


def train(
    optimizer: OptimizerOrFactory,
    *,
    model: str = "mlp",
    epochs: int = 10,
    batch_size: int = 128,
    seeds: Sequence[int] = (0,),
    hidden: int = 64,
) -> dict:
    """Train ``model`` with ``optimizer`` from scratch, once per seed.

    The seed fixes the initialisation and the shuffling, so two optimisers given the
    same seed start from the same parameters and see the same batches.

    Args:
        optimizer: an :class:`optax.GradientTransformation`, or a callable that returns
            one given the total number of steps (for schedules).
        model: one of :data:`MODELS`.
        epochs: passes over the training images.
        batch_size: images per step.
        seeds: one run per seed.
        hidden: width of the MLP's hidden layers (the CNN has ``hidden // 4`` and
            ``hidden // 2`` channels).

    Returns:
        A dict of NumPy arrays, one row per seed: ``step_loss`` ``(S, steps)``, the
        training loss of every batch; ``epoch`` ``(S, epochs)`` dicts ``train_loss``,
        ``train_accuracy``, ``test_loss`` and ``test_accuracy`` on the whole sets after
        each epoch; ``final`` the same metrics after the last epoch ``(S,)``; and the
        floats ``compile_seconds`` (first run, compilation included) and ``seconds``
        (mean wall-clock time of a run after compilation).
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in load_digits_split())
    steps = len(x_train) // batch_size
    if steps < 1:
        raise ValueError(f"batch_size must be at most {len(x_train)}, got {batch_size}")
    if not isinstance(optimizer, optax.GradientTransformation):
        optimizer = optimizer(epochs * steps)

    def evaluate(params):
        train_metrics = _loss_and_accuracy(model, params, x_train, y_train)
        test_metrics = _loss_and_accuracy(model, params, x_test, y_test)
        return dict(zip(METRICS, train_metrics + test_metrics, strict=True))

    def step(carry, batch):
        params, opt_state = carry
        grad_fn = jax.value_and_grad(lambda p: _loss_and_accuracy(model, p, *batch)[0])
        loss, grads = grad_fn(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def epoch(carry, key):
        order = jax.random.permutation(key, len(x_train))[: steps * batch_size]
        order = order.reshape(steps, batch_size)
        carry, losses = jax.lax.scan(step, carry, (x_train[order], y_train[order]))
        return carry, (losses, evaluate(carry[0]))

    @jax.jit
    def run(key):
        init_key, shuffle_key = jax.random.split(key)
        params = init_params(model, init_key, hidden=hidden)
        carry = (params, optimizer.init(params))
        _, (losses, metrics) = jax.lax.scan(epoch, carry, jax.random.split(shuffle_key, epochs))
        return losses.reshape(-1), metrics

    runs, times = [], []
    for seed in seeds:
        start = time.perf_counter()
        runs.append(jax.device_get(jax.block_until_ready(run(jax.random.key(seed)))))
        times.append(time.perf_counter() - start)
    epoch_metrics = {name: np.stack([m[name] for _, m in runs]) for name in METRICS}
    return dict(
        step_loss=np.stack([losses for losses, _ in runs]),
        epoch=epoch_metrics,
        final={name: values[:, -1] for name, values in epoch_metrics.items()},
        compile_seconds=times[0],
        seconds=float(np.mean(times[1:])) if len(times) > 1 else times[0],
    )


def compare(optimizers: Mapping[str, OptimizerOrFactory], **train_options) -> dict:
    """:func:`train` for each named optimiser with the same options; ``name -> result``."""
    return {name: train(optimizer, **train_options) for name, optimizer in optimizers.items()}


def summary(result: dict) -> dict:
    """Final metrics over the seeds: ``metric -> (mean, sample standard deviation)``."""
    out = {}
    for name, values in result["final"].items():
        spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[name] = (float(np.mean(values)), spread)
    return out


def markdown_table(results: Mapping[str, dict]) -> str:
    """Final train/test loss and accuracy per optimiser (mean ± standard deviation over
    the seeds) and the seconds of one run after compilation, as a Markdown table."""
    lines = [
        "| optimiser | train loss | test loss | train accuracy | test accuracy | s / run |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        s = summary(result)
        cells = [f"{s[m][0]:.4f} ± {s[m][1]:.4f}" for m in ("train_loss", "test_loss")]
        cells += [f"{100 * s[m][0]:.1f} ± {100 * s[m][1]:.1f}%" for m in METRICS[1::2]]
        cells.append(f"{result['seconds']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
