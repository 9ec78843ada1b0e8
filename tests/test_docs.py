"""The docstring examples run and print what they say."""

import doctest

import pytest

from jaxsqrtm import _api, _lyapunov, linen


@pytest.mark.parametrize("module", [_api, _lyapunov, linen])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
