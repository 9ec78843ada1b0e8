"""Flax NNX layers: the shared behavioural tests, NNX's conventions, and the same numbers
as the linen layers.

:class:`TestNNX` runs :class:`layer_behaviour.LayerBehaviour` on :mod:`jaxsqrtm.nnx`
(``test_linen.py`` runs it on :mod:`jaxsqrtm.linen`). The functions below test what is
particular to NNX: ``train()``/``eval()``/``nnx.view``, NNX transforms (``nnx.jit``,
``nnx.grad``, ``nnx.vmap``, ``nnx.scan``), ``nnx.Optimizer``, sharding metadata,
``nnx.capture``, and that an NNX layer and a linen layer with the same parameters and
statistics compute the same outputs and statistics (to 1e-6; measured: bitwise equal).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization
from layer_behaviour import (
    FrontEnd,
    Layer,
    LayerBehaviour,
    batch_statistics_accuracy,
    correlated_features,
    digits_batches,
    max_tree_difference,
    randomized,
)

from jaxsqrtm import linen as jlinen
from jaxsqrtm.nnx import (
    AttentiveCovariancePooling,
    CovariancePooling,
    DecorrelatedBatchNorm,
    SecondOrderViTHead,
    load_linen_variables,
)

LAYERS = {
    "dbn": DecorrelatedBatchNorm,
    "covariance_pooling": CovariancePooling,
    "so_vit_head": SecondOrderViTHead,
    "attentive_pooling": AttentiveCovariancePooling,
}


def build(kind, num_features, *, seed=0, **config):
    """The NNX layer of ``kind`` for ``num_features`` input channels."""
    config = dict(config)
    args = (num_features, config.pop("num_classes")) if kind == "so_vit_head" else (num_features,)
    return LAYERS[kind](*args, rngs=nnx.Rngs(seed), **config)


def _filled(template, pure):
    """A copy of the state ``template`` holding the values of the pure dict ``pure``."""
    state = jax.tree.map(lambda a: a, template)
    nnx.replace_by_pure_dict(state, pure)
    return state


def _load(model, params, stats):
    nnx.update(model, _filled(nnx.state(model, nnx.Param), params))
    nnx.update(model, _filled(nnx.state(model, nnx.BatchStat), stats))
    return model


def _layer(kind, model) -> Layer:
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    def apply(pure_params, pure_stats, x, train):
        model = nnx.merge(graphdef, _filled(params, pure_params), _filled(stats, pure_stats))
        if kind == "dbn":
            model = nnx.view(model, use_running_average=not train)
        y = model(x)
        return y, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    return Layer(nnx.to_pure_dict(params), nnx.to_pure_dict(stats), apply)


class NNXFrontEnd(FrontEnd):
    name = "nnx"

    def make(self, kind, x, **config):
        return _layer(kind, build(kind, np.shape(x)[-1], **config))

    def vmapped_train(self, config, layer, x_sharded):
        model = build("dbn", x_sharded.shape[-1], axis_name="shards", **config)
        _load(model, layer.params, layer.stats)

        @nnx.jit
        @nnx.vmap(in_axes=(None, 0), out_axes=0, axis_name="shards")
        def forward(model, x):
            return model(x)

        y = forward(model, x_sharded)
        return y, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    def round_trip(self, kind, x, layer, params, stats, config):
        num_features = np.shape(x)[-1]
        model = _load(build(kind, num_features, **config), params, stats)
        data = serialization.to_bytes(nnx.to_pure_dict(nnx.state(model)))
        fresh = build(kind, num_features, seed=1, **config)
        state = nnx.state(fresh)
        nnx.replace_by_pure_dict(state, serialization.from_bytes(nnx.to_pure_dict(state), data))
        nnx.update(fresh, state)
        return _layer(kind, fresh)

    def train_digits(self, *, steps, batch, seed, **dbn_config):
        model = DigitsNet(nnx.Rngs(seed), **dbn_config)
        optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
        batches, (x_test, y_test) = digits_batches(steps, batch, seed)

        @nnx.jit
        def step(model, optimizer, images, labels):
            def loss_fn(model):
                logits = model(images)
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        model.train()
        losses = [step(model, optimizer, images, labels) for images, labels in batches]

        @nnx.jit
        def predict(model, images):
            return jnp.argmax(model(images), axis=-1)

        model.eval()
        eval_accuracy = float(np.mean(np.asarray(predict(model, x_test)) == y_test))
        model.train()  # batch statistics (this updates the running ones, read above)
        batch_accuracy = batch_statistics_accuracy(
            functools.partial(predict, model), x_test, y_test, batch
        )
        return dict(
            loss=float(np.mean(losses[-20:])),
            batch_accuracy=batch_accuracy,
            eval_accuracy=eval_accuracy,
        )


class DigitsNet(nnx.Module):
    """Conv(1 -> 16, 3x3) - DecorrelatedBatchNorm(group_size=16) - ReLU - max-pool - Linear."""

    def __init__(self, rngs: nnx.Rngs, **dbn_config):
        self.conv = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.norm = DecorrelatedBatchNorm(16, group_size=16, rngs=rngs, **dbn_config)
        self.head = nnx.Linear(4 * 4 * 16, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.norm(self.conv(x))), (2, 2), strides=(2, 2))
        return self.head(x.reshape(x.shape[0], -1))


class TestNNX(LayerBehaviour):
    frontend = NNXFrontEnd()


# --- The same numbers as the linen layers ----------------------------------------------

LINEN_LAYERS = {
    "dbn": jlinen.DecorrelatedBatchNorm,
    "covariance_pooling": jlinen.CovariancePooling,
    "so_vit_head": jlinen.SecondOrderViTHead,
    "attentive_pooling": jlinen.AttentiveCovariancePooling,
}

EQUALITY_CASES = [
    ("dbn", dict(group_size=4, momentum=0.8), (64, 8)),
    ("dbn", dict(group_size=4, method="mpa"), (2, 5, 5, 8)),
    ("covariance_pooling", dict(reduced_channels=4), (2, 6, 6, 8)),
    ("covariance_pooling", dict(output="matrix", epsilon=1e-3, method="ns"), (2, 20, 5)),
    ("so_vit_head", dict(num_classes=3, reduced_channels=4), (2, 25, 8)),
    ("attentive_pooling", dict(reduced_channels=4), (2, 3, 4, 4, 6)),
]

# max |linen - NNX| over outputs and new statistics, float32, parameters randomised and
# statistics after one training step: measured 0 (bitwise equal) in every case.
EQUALITY_TOL = 1e-6


@pytest.mark.parametrize("kind, config, shape", EQUALITY_CASES)
def test_same_numbers_as_linen(kind, config, shape):
    x = correlated_features(shape).astype(np.float32)
    linen_layer = LINEN_LAYERS[kind](**config)
    mode = functools.partial(dict, use_running_average=False) if kind == "dbn" else dict
    variables = jax.jit(functools.partial(linen_layer.init, **mode()))(jax.random.key(0), x)
    variables = {**variables, "params": randomized(variables.get("params", {}), 2)}

    model = build(kind, shape[-1], **config)
    load_linen_variables(model, variables)

    # A training step, then evaluation with its statistics (one compilation each).
    @jax.jit
    def linen_steps(variables, x):
        if kind != "dbn":
            return linen_layer.apply(variables, x), {}, None
        y, updates = linen_layer.apply(
            variables, x, use_running_average=False, mutable=["batch_stats"]
        )
        y_eval = linen_layer.apply({**variables, **updates}, x, use_running_average=True)
        return y, updates["batch_stats"], y_eval

    @nnx.jit
    def nnx_steps(model, x):
        if kind != "dbn":
            return model(x), {}, None
        y = nnx.view(model, use_running_average=False)(x)
        y_eval = nnx.view(model, use_running_average=True)(x)
        return y, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), y_eval

    got, expected = nnx_steps(model, x), linen_steps(variables, x)
    assert got[0].dtype == expected[0].dtype and got[0].shape == expected[0].shape
    assert max_tree_difference(got, expected) <= EQUALITY_TOL


def test_load_linen_variables_rejects_other_names():
    model = build("dbn", 8, group_size=4)
    with pytest.raises(
        ValueError,
        match=r"load_linen_variables: variables must hold exactly.*missing \['bias', 'mean'",
    ):
        load_linen_variables(model, {"params": {"scale": np.ones(8)}})


# --- NNX's conventions -----------------------------------------------------------------


def test_train_eval_and_view_set_the_mode():
    x = jnp.asarray(correlated_features((64, 8), mean=2.0), jnp.float32)
    model = DecorrelatedBatchNorm(8, group_size=4, momentum=0.5, rngs=nnx.Rngs(0))
    assert model.use_running_average is False  # training mode by default, as nnx.BatchNorm
    np.testing.assert_allclose(model(x)[:, :4].std(axis=0), 1, rtol=1e-3)
    after_one = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    assert float(np.abs(after_one["mean"]).min()) > 0

    model.eval()
    assert model.use_running_average is True
    y_eval = model(x)  # running statistics, not updated
    assert max_tree_difference(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), after_one) == 0
    np.testing.assert_allclose(model(x[:3]), y_eval[:3], rtol=1e-6)

    train_view = nnx.view(model, use_running_average=False)
    assert train_view.use_running_average is False and model.use_running_average is True
    y_train = train_view(x)  # the view shares the variables: statistics updated
    assert max_tree_difference(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), after_one) > 0
    np.testing.assert_allclose(model(x, use_running_average=False), y_train, rtol=1e-5)

    model.train()
    assert model.use_running_average is False
    eval_view = nnx.view(model, use_running_average=True)
    np.testing.assert_array_equal(eval_view(x), model(x, use_running_average=True))

    model.use_running_average = None
    with pytest.raises(ValueError, match="DecorrelatedBatchNorm: use_running_average must be set"):
        model(x)


def test_nested_model_modes_and_optimizer_loop():
    """A model of all four layers: ``model.train()``/``model.eval()`` reach the
    decorrelated batch norm inside it, and an ``nnx.Optimizer`` loop under ``nnx.jit``
    trains it (finite gradients for every parameter, loss decreasing)."""

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.norm = DecorrelatedBatchNorm(8, group_size=4, momentum=0.5, rngs=rngs)
            self.attentive = AttentiveCovariancePooling(8, reduced_channels=4, rngs=rngs)
            self.pool = CovariancePooling(8, reduced_channels=4, rngs=rngs)
            self.head = SecondOrderViTHead(8, 3, reduced_channels=4, rngs=rngs)
            self.out = nnx.Linear(10, 3, rngs=rngs)

        def __call__(self, video):
            n, t, h, w, c = video.shape
            x = self.norm(video)
            tokens = x.reshape(n, t * h * w, c)
            return (
                self.out(self.attentive(x))
                + self.out(self.pool(tokens))
                + self.head(jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], 1))
            )

    video = jnp.asarray(correlated_features((6, 2, 3, 3, 8)), jnp.float32)
    labels = jnp.arange(6) % 3
    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, video, labels):
        def loss_fn(model):
            logits = model(video)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    losses = []
    for _ in range(8):
        loss, grads = step(model, optimizer, video, labels)
        losses.append(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert len(jax.tree.leaves(grads)) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert losses[-1] < losses[0], losses

    model.eval()
    assert model.norm.use_running_average is True
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    nnx.jit(lambda model, video: model(video))(model, video)
    assert max_tree_difference(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), stats) == 0
    model.train()
    assert model.norm.use_running_average is False


def test_nnx_grad_equals_the_gradient_of_the_pure_function():
    x = jnp.asarray(correlated_features((64, 8)), jnp.float32)
    model = build("dbn", 8, group_size=4, method="eigh")
    weights = jnp.sin(jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape))

    grads = nnx.grad(lambda model: jnp.sum(model(x) * weights))(model)
    layer = _layer("dbn", build("dbn", 8, group_size=4, method="eigh"))
    expected = jax.grad(lambda p: jnp.sum(layer.apply(p, layer.stats, x, True)[0] * weights))(
        layer.params
    )
    assert max_tree_difference(nnx.to_pure_dict(grads), expected) <= 1e-6


def test_scan_over_a_stack_of_layers():
    """Three decorrelated batch norms created with ``nnx.vmap`` and applied in sequence
    with ``nnx.scan``, in training mode: the same output and statistics as three layers
    applied one after the other."""
    x = jnp.asarray(correlated_features((128, 8), mean=1.0), jnp.float32)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=0, out_axes=0)
    def create(rngs):
        return DecorrelatedBatchNorm(8, group_size=4, momentum=0.5, method="eigh", rngs=rngs)

    stack = create(nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(stack, nnx.Param))
    params = randomized(params, 5)
    nnx.update(stack, _filled(nnx.state(stack, nnx.Param), params))

    @nnx.jit
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def forward(layer, x):
        return layer(x)

    y = forward(stack, x)
    stacked_stats = nnx.to_pure_dict(nnx.state(stack, nnx.BatchStat))
    assert stacked_stats["whitening"].shape == (3, 2, 4, 4)

    expected = x
    for i in range(3):
        layer = build("dbn", 8, group_size=4, momentum=0.5, method="eigh")
        nnx.update(
            layer, _filled(nnx.state(layer, nnx.Param), jax.tree.map(lambda p, i=i: p[i], params))
        )
        expected = layer(expected)
        stats = nnx.to_pure_dict(nnx.state(layer, nnx.BatchStat))
        assert max_tree_difference(stats, jax.tree.map(lambda s, i=i: s[i], stacked_stats)) <= 1e-6
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=2e-5)  # float32, 3 layers


def test_sharding_metadata_as_flax_batch_norm():
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    with jax.set_mesh(mesh):
        dbn = DecorrelatedBatchNorm(
            8,
            group_size=4,
            scale_metadata={"out_sharding": ("model",)},
            bias_metadata={"out_sharding": ("model",)},
            rngs=nnx.Rngs(0),
        )
        head = SecondOrderViTHead(
            8,
            3,
            reduced_channels=4,
            kernel_metadata={"out_sharding": ("data", "model")},
            rngs=nnx.Rngs(0),
        )
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(dbn)))
    assert specs["scale"] == specs["bias"] == jax.P("model")
    assert specs["mean"] == specs["whitening"] == jax.P()
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(head, nnx.Param)))
    kernels = [
        specs["class_head"],
        specs["covariance_head"],
        specs["covariance_pooling"]["reduction"],
    ]
    assert [k["kernel"] for k in kernels] == [jax.P("data", "model")] * 3


def test_attention_weights_are_sown_only_when_asked():
    video = correlated_features((2, 3, 4, 4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sowing outside nnx.capture by default
        layer = AttentiveCovariancePooling(5, method="eigh", rngs=nnx.Rngs(0))
        layer(video)
    assert not nnx.state(layer, nnx.Intermediate)

    layer = AttentiveCovariancePooling(5, method="eigh", sow_weights=True, rngs=nnx.Rngs(0))
    _, intermediates = nnx.capture(layer, nnx.Intermediate)(video)
    (weights,) = nnx.to_pure_dict(intermediates)["attention"]
    np.testing.assert_allclose(weights, 1 / 48)


def test_construction_and_call_errors():
    with pytest.raises(
        ValueError, match=r"group_size must divide the 12 channels, got group_size=5"
    ):
        DecorrelatedBatchNorm(12, group_size=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"CovariancePooling: rngs must be an nnx\.Rngs"):
        CovariancePooling(8, reduced_channels=4)
    with pytest.raises(ValueError, match="output must be one of"):
        CovariancePooling(8, output="vector")
    layer = DecorrelatedBatchNorm(8, group_size=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"num_features=8 channels.*got shape \(4, 6\)"):
        layer(np.ones((4, 6), np.float32))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., C\)"):
        DecorrelatedBatchNorm(8, group_size=4, rngs=nnx.Rngs(0))(np.ones((8,), np.float32))
    pool = CovariancePooling(8)  # no parameters, no rngs needed
    assert pool(np.ones((2, 3, 8), np.float32)).shape == (2, 36)
