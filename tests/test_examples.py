"""End-to-end training of the Flax layers on scikit-learn's digits (fixed split and seeds)."""

import pytest

from jaxsqrtm.examples.digits import load_digits_split, make_model, train_digits


def test_digits_split_is_fixed_and_stratified():
    x_train, y_train, x_test, y_test = load_digits_split()
    assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
    assert x_train.dtype == "float32" and y_train.dtype == "int32"
    assert sorted(set(y_test.tolist())) == list(range(10))
    assert (load_digits_split()[3] == y_test).all()


@pytest.mark.parametrize("model_name", ["covariance_cnn", "decorrelated_cnn"])
def test_cnn_with_second_order_layer_reaches_97_percent(model_name):
    result = train_digits(model_name, epochs=5, seed=0)
    assert result["accuracy"] >= 0.97, result["curve"]
    assert len(result["curve"]) == 5 and result["seconds"] > 0


def test_token_model_with_so_vit_head_beats_chance():
    result = train_digits("so_vit", epochs=3, seed=0)
    assert result["accuracy"] >= 0.5, result["curve"]  # chance is 0.1


def test_unknown_model_name():
    with pytest.raises(ValueError, match="model_name must be one of"):
        make_model("resnet")
