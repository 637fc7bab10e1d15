"""The registry of mixers: one table that the model, the budgets and the CLI read."""

import pytest

from hypermlp import ConfigError, HyperConfig, HyperGLU, ReLUAttention, SoftmaxAttention
from hypermlp.models import LanguageModel, ModelConfig
from hypermlp.registry import MIXERS, MixerSpec, get_mixer, mixer_names, register_mixer


def test_the_four_mixers_are_registered_with_their_classes():
    assert mixer_names() == ["softmax", "relu", "hypermlp", "hyperglu"]
    assert get_mixer("hyperglu").layer_cls is HyperGLU
    assert get_mixer("softmax").config_cls is SoftmaxAttention.config_cls
    assert get_mixer("relu").config_cls is HyperConfig


def test_score_heads_come_from_the_layer_kind():
    assert get_mixer("hyperglu").score_heads(3) == 6
    for name in ("softmax", "relu", "hypermlp"):
        assert get_mixer(name).score_heads(3) == 3
    # and the built layer agrees
    assert HyperGLU(d_model=16, n_heads=2, qk_rank=8).qk_heads == get_mixer("hyperglu").score_heads(2)


def test_accepted_args_leave_out_what_the_layer_or_the_model_fixes():
    relu = get_mixer("relu").accepted_args()
    assert not relu & set(ReLUAttention.fixed_args)
    assert "d_model" not in relu and "max_len" not in relu
    assert "seq_rank" in get_mixer("hyperglu").accepted_args()
    assert "seq_rank" not in get_mixer("softmax").accepted_args()


def test_build_takes_only_the_arguments_that_apply():
    layer = get_mixer("softmax").build(32, 64, {"n_heads": 2, "seq_rank": 4})  # seq_rank is not softmax's
    assert isinstance(layer, SoftmaxAttention) and layer.config.n_heads == 2


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="unknown mixer 'flash'.*hyperglu"):
        get_mixer("flash")
    with pytest.raises(ConfigError, match="unknown mixer"):
        ModelConfig(vocab_size=8, mixer="flash").validate()


def test_a_registered_mixer_is_usable_by_name_in_the_model():
    spec = MixerSpec("softmax_test_only", SoftmaxAttention, SoftmaxAttention.config_cls, "test")
    register_mixer(spec)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_mixer(spec)
        model = LanguageModel(ModelConfig(vocab_size=8, d_model=16, n_layers=1, mixer="softmax_test_only", max_len=8))
        assert isinstance(model.blocks[0].mixer, SoftmaxAttention)
    finally:
        del MIXERS["softmax_test_only"]
