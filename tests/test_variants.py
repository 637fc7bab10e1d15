"""Variant names of the paper's design study (``Base-Feat-Rank-Tmix``): parsing, the round trip
name -> layer arguments -> name, the errors, and the registry, model and CLI taking them."""

import pathlib

import pytest

from hypermlp import ConfigError, HyperGLU, HyperMLP, ReLUAttention, SoftmaxAttention
from hypermlp.budget import count_params
from hypermlp.models import LanguageModel, ModelConfig
from hypermlp.registry import MIXERS, MixerSpec, get_mixer, mixer_names, register_mixer
from hypermlp.variants import EXAMPLES, LETTERS, Variant, help_text, letter_table_markdown, parse_variant, variant_name

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
D = 64
CLASSES = {"softmax": SoftmaxAttention, "relu": ReLUAttention, "hypermlp": HyperMLP, "hyperglu": HyperGLU}

# name -> (registered mixer, the arguments its letters give at d = 64)
EXPECTED = {
    "S-pc": ("softmax", dict(conv_size=4, qk_gate=False, out_gate=False, rope=True, qk_rank=64, vo_rank=64)),
    "R-pc": ("relu", dict(conv_size=4, qk_gate=False, out_gate=False, rope=True, qk_rank=64, vo_rank=64)),
    "R-cg-q": ("relu", dict(conv_size=4, qk_gate=True, out_gate=True, rope=False, qk_rank=16, vo_rank=64)),
    "R-cg-q-12o": ("hypermlp", dict(conv_size=4, qk_gate=True, out_gate=True, rope=False, qk_rank=16, vo_rank=64,
                                    mix1=True, mix2=True, layout="lag")),
    "G-cg-q-1o": ("hyperglu", dict(conv_size=4, qk_gate=True, out_gate=True, rope=False, qk_rank=16, vo_rank=64,
                                   mix1=True, mix2=False, layout="lag")),
    "G-cg-q-12o": ("hyperglu", dict(conv_size=4, qk_gate=True, out_gate=True, rope=False, qk_rank=16, vo_rank=64,
                                    mix1=True, mix2=True, layout="lag")),
    "S-c-q": ("softmax", dict(conv_size=4, qk_gate=False, out_gate=False, rope=False, qk_rank=16, vo_rank=64)),
    "S-c-v": ("softmax", dict(conv_size=4, qk_gate=False, out_gate=False, rope=False, qk_rank=64, vo_rank=16)),
    "R-c-q": ("relu", dict(conv_size=4, qk_gate=False, out_gate=False, rope=False, qk_rank=16, vo_rank=64)),
    "R-c-v": ("relu", dict(conv_size=4, qk_gate=False, out_gate=False, rope=False, qk_rank=64, vo_rank=16)),
    "R-g-q-12o": ("hypermlp", dict(conv_size=0, qk_gate=True, out_gate=True, rope=False, qk_rank=16, vo_rank=64,
                                   mix1=True, mix2=True, layout="lag")),
    "R-12!": ("hypermlp", dict(conv_size=0, qk_gate=False, out_gate=False, rope=False, qk_rank=64, vo_rank=64,
                               mix1=True, mix2=True, layout="left")),
    "R-12o!": ("hypermlp", dict(conv_size=0, qk_gate=False, out_gate=False, rope=False, qk_rank=64, vo_rank=64,
                                mix1=True, mix2=True, layout="lag")),
}


def test_the_examples_are_the_papers():
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_example_parses_to_its_mixer_and_arguments(name):
    v = parse_variant(name)
    mixer, args = EXPECTED[name]
    assert v.mixer == mixer and v.layer_args(D) == args
    assert v.overparameterised == name.endswith("!")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_example_round_trips(name):
    v = parse_variant(name)
    assert v.name == name
    for d in (32, 64, 256):
        assert variant_name(v.mixer, d, v.layer_args(d), v.overparameterised) == name
    # and through a built layer's config
    layer = get_mixer(name).build(D, 32, {"n_heads": 2})
    fields = {k: getattr(layer.config, k) for k in v.layer_args(D)}
    assert variant_name(v.mixer, D, fields, v.overparameterised) == name


def every_name():
    """Every name the grammar allows (all bases, feature subsets, ranks, Tmix segments, bounds)."""
    feats = ["", "p", "c", "g", "pc", "pg", "cg", "pcg"]
    tmixes = ["", "1", "2", "12", "1o", "2o", "12o"]
    for base in "SRG":
        for f in feats:
            for r in ("", "q", "v"):
                for t in tmixes:
                    if base == "S" and t:
                        continue
                    for bang in ("", "!"):
                        yield "-".join([base] + [s for s in (f, r, t) if s]) + bang


def test_the_whole_grammar_round_trips_and_names_are_unique():
    names = list(every_name())
    assert len(names) == 2 * 8 * 3 * (1 + 7 + 7)  # S has no Tmix
    seen = {}
    for name in names:
        v = parse_variant(name)
        assert v.name == name
        assert variant_name(v.mixer, D, v.layer_args(D), v.overparameterised) == name
        key = (v.mixer, tuple(sorted(v.layer_args(D).items())), v.overparameterised)
        assert key not in seen, (name, seen.get(key))  # one model, one name
        seen[key] = name


def test_absent_segments():
    assert parse_variant("S") == Variant("S")
    assert parse_variant("S").layer_args(D) == dict(conv_size=0, qk_gate=False, out_gate=False, rope=False,
                                                    qk_rank=D, vo_rank=D)
    assert parse_variant("R").mixer == "relu" and parse_variant("R-1").mixer == "hypermlp"
    g = parse_variant("G-cg")
    assert g.mixer == "hyperglu" and g.layer_args(D)["mix1"] is False and g.layer_args(D)["mix2"] is False
    assert "layout" not in g.layer_args(D)  # no mixing: the layout does not matter
    assert parse_variant("R-2").layer_args(D)["layout"] == "left"  # digits without o
    assert parse_variant("R!").overparameterised


@pytest.mark.parametrize(
    "name, needle",
    [
        ("S-c-12o", "letter '1' of the Tmix segment '12o': softmax (S) has no sequence mixing"),
        ("S-pc-q-1", "letter '1' of the Tmix segment '1'"),
        ("X-cg", "unknown base letter 'X'"),
        ("s-pc", "unknown base letter 's'"),
        ("R-cx", "unknown letter 'x' in the Feat segment 'cx'"),
        ("R-cg-z", "unknown letter 'z' in segment 'z'"),
        ("R-q1", "unknown letter '1' in the Rank segment 'q1'"),
        ("R-1x", "unknown letter 'x' in the Tmix segment '1x'"),
        ("R-o", "'o' (the lag layout) needs a digit"),
        ("R-1o2", "'o' (the lag layout) comes once, after the digits"),
        ("R-12oo", "'o' (the lag layout) comes once"),
        ("R-cp", "order p, c, g: 'pc', not 'cp'"),
        ("R-gc-q", "'cg', not 'gc'"),
        ("R-cc", "a Feat letter repeats"),
        ("R-21", "order 1, 2: '12', not '21'"),
        ("R-11", "a Tmix digit repeats"),
        ("R-qv", "one Rank letter only"),
        ("R-q-cg", "the Feat segment 'cg' must come before the Rank segment 'q'"),
        ("R-12-q", "the Rank segment 'q' must come before the Tmix segment '12'"),
        ("R-c-c", "two Feat segments"),
        ("R--c", "an empty segment"),
        ("R-c-", "an empty segment"),
        ("R-!", "an empty segment"),
        ("R!-12", "may only come last"),
        ("R-12!!", "may only come last"),
    ],
)
def test_bad_names_are_errors_naming_the_letter(name, needle):
    with pytest.raises(ConfigError) as e:
        parse_variant(name)
    assert needle in str(e.value) and repr(name) in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="variant name"):  # the registry says the same
        get_mixer(name)


@pytest.mark.parametrize(
    "mixer, args, needle",
    [
        ("softmax", {"conv_size": 3}, "conv_size=3"),
        ("hypermlp", {"qk_gate": True, "out_gate": False}, "g means both gates"),
        ("hyperglu", {"qk_rank": 8}, "qk_rank=8, vo_rank=64"),
        ("relu", {"mix1": True}, "does not take ['mix1']"),
        ("softmax", {"seq_rank": 4}, "unknown argument(s) ['seq_rank']"),
        ("mamba", {}, "no variant letter"),
    ],
)
def test_arguments_without_a_name_are_errors(mixer, args, needle):
    with pytest.raises(ConfigError) as e:
        variant_name(mixer, D, args)
    assert needle in str(e.value), str(e.value)


def test_registered_defaults_have_names_too():
    # a registered layer at its defaults (the layer's own defaults fill what args leave out)
    assert variant_name("softmax", D) == "S-p"
    assert variant_name("hyperglu", D) == "G-cg-q-12o"
    assert variant_name("hypermlp", D) == "R-cg-q-12o"
    assert variant_name("relu", D) == "R-cg-q"
    assert variant_name("hypermlp", D, {"mix1": False, "mix2": False}) == "R-cg-q"  # the same model as relu


def test_registered_names_keep_their_meaning_and_variants_resolve():
    assert mixer_names() == ["softmax", "relu", "hypermlp", "hyperglu"]
    for name in mixer_names():
        spec = get_mixer(name)
        assert spec.variant is None and spec.base == name and spec.defaults(D) == {} and not spec.overparameterised
    for name, (mixer, args) in EXPECTED.items():
        spec = get_mixer(name)
        assert spec.name == name and spec.base == mixer and spec.layer_cls is CLASSES[mixer]
        assert spec.defaults(D) == args and spec.overparameterised == name.endswith("!")
        assert spec.accepted_args() == get_mixer(mixer).accepted_args()
        assert get_mixer(name) is spec  # built once
    assert name not in MIXERS  # variants are not registered, only resolved


def test_mixer_args_override_a_variants_letters():
    spec = get_mixer("R-cg-q-12o")
    cfg = spec.layer_config(D, n_heads=2, qk_rank=8, conv_size=0, max_len=16, vocab_size=3)  # vocab: not a layer arg
    assert (cfg.qk_rank, cfg.conv_size, cfg.max_len, cfg.vo_rank, cfg.layout) == (8, 0, 16, 64, "lag")
    layer = spec.build(D, 16, {"n_heads": 2, "qk_rank": 8})
    assert isinstance(layer, HyperMLP) and layer.config.qk_rank == 8 and layer.config.qk_gate
    relu = get_mixer("R-c-q").build(D, 16, {"n_heads": 2, "seq_rank": 4})  # seq_rank: not ReLU attention's
    assert isinstance(relu, ReLUAttention) and relu.config.qk_rank == 16 and not relu.config.mix1


def test_the_model_takes_variant_names_including_hybrids_and_save_load(tmp_path):
    cfg = ModelConfig(vocab_size=16, d_model=D, n_layers=2, mixer=["S-pc", "G-cg-q-12o"],
                      mixer_args={"n_heads": 2}, max_len=32)
    model = LanguageModel(cfg)
    assert isinstance(model.blocks[0].mixer, SoftmaxAttention) and model.blocks[0].mixer.config.qk_rank == D
    assert isinstance(model.blocks[1].mixer, HyperGLU) and model.blocks[1].mixer.config.qk_rank == D // 4
    model.save(str(tmp_path))
    assert LanguageModel.load(str(tmp_path)).num_params() == model.num_params()
    with pytest.raises(ConfigError, match="softmax .S. has no sequence mixing"):
        ModelConfig(vocab_size=16, mixer="S-12o").validate()
    # the bound really is bigger: same layer with its tables at full rank
    assert count_params(ModelConfig(vocab_size=16, d_model=D, mixer="R-12!", max_len=32)) > \
        count_params(ModelConfig(vocab_size=16, d_model=D, mixer="S-pc", max_len=32))


def test_a_name_that_reads_as_a_variant_cannot_be_registered():
    with pytest.raises(ConfigError, match="reads as a variant name"):
        register_mixer(MixerSpec("R-fast", SoftmaxAttention, SoftmaxAttention.config_cls, "test"))
    assert "R-fast" not in MIXERS


def test_unknown_long_names_still_list_the_registered_mixers():
    with pytest.raises(ConfigError, match=r"unknown mixer 'hyperglu-ref'; choose from \['softmax'.*R-cg-q-12o"):
        get_mixer("hyperglu-ref")


def test_the_readme_table_and_help_are_the_codes_table():
    text = README.read_text()
    assert "## Variant names" in text
    assert letter_table_markdown() in text
    for row in LETTERS:  # every letter is in the one-line help too
        if row.letter:
            assert f" {row.letter} " in help_text() or f"{row.letter} " in help_text(), row


def test_the_cli_help_has_the_letters(capsys):
    from hypermlp.cli import build_parser

    for cmd in ("train", "compare"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([cmd, "--help"])
        out = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at hyphens
        assert "Base-Feat-Rank-Tmix" in out and "R-cg-q-12o" in out and "over-parameterised" in out


def test_train_takes_a_variant_name_and_refuses_a_bad_one(tmp_path, monkeypatch, capsys):
    import json

    import torch

    from hypermlp.cli import main

    monkeypatch.setenv("HYPERMLP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CI", "true")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 200)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "run"
        argv = ["train", "--task", "lm", "--data", str(corpus), "--seq-len", "16", "--data-arg", "eval_windows=2",
                "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--batch-size", "2", "--steps", "2",
                "--warmup-steps", "0", "--mixer", "R-cg-q-12o", "--out", str(out)]
        assert main(argv) == 0
        saved = [json.loads(p.read_text()) for p in out.rglob("config.json")]
        assert saved and all(c["mixer"] == "R-cg-q-12o" for c in saved)
        capsys.readouterr()
        assert main(argv[:-4] + ["--mixer", "S-c-12o", "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "'S-c-12o'" in err[0] and "letter '1'" in err[0]
        assert not (tmp_path / "bad").exists()
    finally:
        torch.set_num_threads(threads)
