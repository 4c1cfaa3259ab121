"""Small pure pieces of the examples."""

import pytest

from testing import load_script


@pytest.fixture(scope="module")
def celeba_lfw():
    module = load_script("examples/celeba_lfw.py")
    return module


def test_loss_spec_parsing(celeba_lfw):
    parse = celeba_lfw.parse_loss_spec
    assert parse("arcface") == ("arcface", {})
    assert parse("kappaface:momentum_encoder") == ("kappaface", {"estimator": "momentum_encoder"})
    assert parse("kappaface:memory_buffer:margin=0.5") == ("kappaface", {"estimator": "memory_buffer", "margin": 0.5})
    assert parse("arcface:easy_margin=False") == ("arcface", {"easy_margin": False})
    assert parse("x2softmax:a=-0.9:k=6.5e-1") == ("x2softmax", {"a": -0.9, "k": 0.65})
    assert parse("subface:head=cosface") == ("subface", {"head": "cosface"})
