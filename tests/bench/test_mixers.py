"""The benchmarked layers come from the registry; ``-ref`` is the reference core."""

import pytest
import torch

from hypermlp.bench.mixers import LAYER_MIXERS, MIXERS, layer_description, make_layer
from hypermlp.registry import get_mixer


@pytest.mark.parametrize("name", LAYER_MIXERS)
def test_every_benchmarked_layer_is_the_registrys(name):
    layer = make_layer(name, d_model=32, max_len=16, chunk_size=8)
    mixer = name.removesuffix("-ref")
    assert type(layer) is get_mixer(mixer).layer_cls
    if mixer != "softmax":
        assert layer.config.impl == ("reference" if name.endswith("-ref") else "chunked")
        assert layer.config.chunk_size == 8
    assert layer_description(layer)
    y = layer(torch.randn(1, 5, 32))
    assert y.shape == (1, 5, 32)


def test_table_order_starts_with_softmax():
    assert MIXERS[0] == "softmax" and set(MIXERS) <= set(LAYER_MIXERS)
    assert layer_description(make_layer("softmax", 256, 64)) == "4 heads of 64, SDPA, RoPE"
