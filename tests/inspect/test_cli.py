"""``hypermlp inspect`` end to end on tiny checkpoints: a MAD run made by ``hypermlp train`` and
a text model saved directly; every file it lists is written; every bad request is one line."""

import os
import re

import pytest
import torch

from hypermlp.checkpoint import latest_checkpoint
from hypermlp.cli import main
from hypermlp.models import LanguageModel, ModelConfig

from ..cli.helpers import TEXT, lm_args
from ..helpers import assert_one_line_error, snapshot

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mad_run(tmp_path_factory):
    """A 2-step HyperGLU run on in-context recall (12 tokens), made by ``hypermlp train``."""
    root = tmp_path_factory.mktemp("mad")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERMLP_CACHE", str(root / "cache"))
        mp.setenv("CI", "true")
        args = ["train", "--task", "mad:in_context_recall", "--mixer", "hyperglu", "--d-model", "16", "--n-layers", "2",
                "--n-heads", "2", "--seq-len", "12", "--data-arg", "num_train=64", "--data-arg", "num_test=8",
                "--steps", "2", "--batch-size", "16", "--out", str(root / "run"), "--no-progress"]
        assert main(args) == 0
    return str(root / "run")


@pytest.fixture
def text_model(tmp_path):
    """A byte-level model (HyperGLU then softmax attention, max_len 16) saved as a checkpoint folder."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=16, n_layers=2, mixer=["hyperglu", "softmax"], mixer_args={"n_heads": 2},
                      max_len=16)
    folder = tmp_path / "ckpt"
    LanguageModel(cfg).save(str(folder))
    return str(folder)


def _check_written(capsys, out, expected):
    """The command's listed files are exactly inspect.md + ``expected``, all written; the PNGs
    inspect.md shows are among them."""
    printed = capsys.readouterr().out.splitlines()
    listed = [line for line in printed[1:] if line.strip()]
    assert printed[0].startswith("hypermlp inspect: ")
    assert [os.path.basename(p) for p in listed] == ["inspect.md", *expected]
    for path in listed:
        assert os.path.isfile(path) and os.path.getsize(path) > 0
        if path.endswith(".png"):
            assert open(path, "rb").read(8) == PNG
    report = open(os.path.join(out, "inspect.md")).read()
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(shown) == sorted(expected)
    return report


def test_inspect_a_task_example_of_a_trained_run(mad_run, tmp_path, capsys):
    out = str(tmp_path / "inspect")
    assert main(["inspect", "--checkpoint", mad_run, "--task", "mad:in_context_recall", "--example", "1", "--out", out,
                 "--batch-size", "6", "--layers", "0"]) == 0
    per_layer = ["memory", "sparsity", "mixing", "glu"]
    report = _check_written(capsys, out, [f"layer0_{k}.png" for k in per_layer])
    assert "example 1 of the test split of mad:in_context_recall (12 tokens)" in report
    assert "run's recorded data settings (run.yaml), seed 0" in report
    assert "the first 6 examples of the test split" in report
    assert report.count("| 0 |") == 1 and report.count("| 1 |") == 1  # a row per head
    # the table's sparsity: the probe's active fractions of the example and of the batch (probed in chunks)
    import yaml

    from hypermlp.inspect import active_fraction, probe
    from hypermlp.tasks import build_task

    record = yaml.safe_load(open(os.path.join(mad_run, "run.yaml")))
    data = {k: v for k, v in record["data"].items() if k not in ("source", "vocab_size")}
    test_inputs = build_task(record["task"], data, record["cache_dir"])[0].data.test_inputs
    model = LanguageModel.load(latest_checkpoint(mad_run))
    here = active_fraction(probe(model, test_inputs[1:2], layers=[0])[0].trace)[0]  # (H, T)
    there = active_fraction(probe(model, test_inputs[:6], layers=[0])[0].trace).nanmean(0)  # (H, T)
    for h in (0, 1):
        row = f"| {h} | {float(here[h].nanmean()) * 100:.1f}% | {float(there[h].nanmean()) * 100:.1f}% |"
        assert row in report, (row, report)

    # one layer and head of the validation split; an existing report needs --force
    args = ["inspect", "--checkpoint", mad_run, "--task", "mad:in_context_recall", "--example", "0", "--split", "val",
            "--layers", "1", "--heads", "0", "--out", out]
    before = snapshot(out)
    assert_one_line_error(capsys, main(args), "already holds an inspect.md", "--force")
    assert snapshot(out) == before
    assert main(args + ["--force"]) == 0
    report = _check_written(capsys, out, [f"layer1_{k}.png" for k in per_layer])
    assert "of the val split" in report and "## Layer 0" not in report and "## Layer 1: hyperglu" in report
    assert report.count("| 0 |") == 1 and "| 1 |" not in report


def test_inspect_a_prompt_of_a_text_model(text_model, tmp_path, capsys):
    out = str(tmp_path / "inspect")
    assert main(["inspect", "--checkpoint", text_model, "--prompt", "hello", "--out", out]) == 0
    report = _check_written(capsys, out, ["layer0_memory.png", "layer0_sparsity.png", "layer0_mixing.png",
                                          "layer0_glu.png", "layer1_memory.png"])
    assert "prompt 'hello' (5 tokens)" in report and "`h` `e` `l` `l` `o`" in report
    assert "the prompt itself" in report  # no run.yaml: no validation text to average over
    assert "## Layer 1: softmax" in report
    # the table's strongest slots of the last query are those of the probe
    from hypermlp.inspect import flip_layout, probe

    model = LanguageModel.load(text_model)
    for layer, lp in probe(model, torch.tensor([list(b"hello")])).items():
        for row, head in enumerate(lp.heads):
            weights = flip_layout(lp.trace.weights[0, row])[-1]  # the last query's weights by key
            keys = weights.argsort(descending=True)[:3].tolist()
            listed = [line for line in report.split(f"## Layer {layer}")[1].splitlines() if line.startswith(f"| {head} |")][0]
            assert re.findall(r"key (\d)", listed) == [str(k) for k in keys], listed


def test_sparsity_mean_over_the_runs_validation_windows(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run = tmp_path / "lm"
    assert main(lm_args(str(corpus), run, "--steps", "2", "--mixer", "relu", "--n-layers", "1")) == 0
    capsys.readouterr()
    out = str(tmp_path / "inspect")
    assert main(["inspect", "--checkpoint", str(run), "--prompt", "def f3(x):", "--out", out, "--batch-size", "3"]) == 0
    report = _check_written(capsys, out, ["layer0_memory.png", "layer0_sparsity.png"])  # ReLU attention: no mixing
    assert "3 validation windows of 32 tokens from the run's corpus" in report
    assert "## Layer 0: relu" in report
    # --task lm: example N is validation window N
    assert main(["inspect", "--checkpoint", str(run), "--task", "lm", "--example", "2", "--out", out, "--force"]) == 0
    report = _check_written(capsys, out, ["layer0_memory.png", "layer0_sparsity.png"])
    assert "example 2 of the val split of lm (32 tokens)" in report


def test_bad_requests_are_one_line_errors_before_any_work(mad_run, text_model, tmp_path, capsys):
    out = tmp_path / "inspect"
    base = ["inspect", "--out", str(out)]
    prompt = base + ["--checkpoint", text_model, "--prompt"]
    task = base + ["--checkpoint", mad_run, "--task", "mad:in_context_recall"]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("{not json")
    (damaged / "model.safetensors").write_bytes(open(os.path.join(text_model, "model.safetensors"), "rb").read())
    cases = [
        (base + ["--checkpoint", str(tmp_path / "nowhere"), "--prompt", "hi"], ["no such checkpoint folder"]),
        (base + ["--checkpoint", str(damaged), "--prompt", "hi"], ["cannot read", "config.json"]),
        (prompt + ["x" * 17], ["the prompt has 17 tokens but the model's max_len is 16"]),
        (prompt + ["hi", "--layers", "2"], ["unknown layer 2: the model has 2"]),
        (prompt + ["hi", "--heads", "0,5"], ["unknown head 5: layer 0 (hyperglu) has 2"]),
        (prompt + ["hi", "--layers", "a"], ["--layers expects comma-separated integers"]),
        (prompt + [""], ["the prompt is empty"]),
        (prompt + ["hi", "--task", "lm"], ["not allowed with argument"]),
        (prompt + ["hi", "--example", "0"], ["--example N goes with --task"]),
        (base + ["--checkpoint", mad_run, "--prompt", "hi"], ["16-token vocabulary", "not a text model", "--task"]),
        (task, ["needs an example index"]),
        (task + ["--example", "99"], ["--example 99 does not exist: the test split has 8 examples"]),
        (task + ["--example", "0", "--batch-size", "0"], ["batch size must be a positive integer"]),
        (base + ["--checkpoint", mad_run, "--task", "mad:selective_copying", "--example", "0"],
         ["trained on 'mad:in_context_recall', not 'mad:selective_copying'"]),
        (base + ["--checkpoint", mad_run, "--task", "mad:nope", "--example", "0"], ["unknown task 'mad:nope'"]),
        # a checkpoint folder finds its run's run.yaml two levels up
        (base + ["--checkpoint", latest_checkpoint(mad_run), "--task", "mad:selective_copying", "--example", "0"],
         ["trained on 'mad:in_context_recall'"]),
        # no run.yaml: the task's default data, which does not fit this model
        (base + ["--checkpoint", text_model, "--task", "mad:in_context_recall", "--example", "0"],
         ["in_context_recall has 16 tokens but the model's vocabulary has 256"]),
    ]
    for args, needles in cases:
        assert_one_line_error(capsys, main(args), *needles)
        assert not out.exists(), args  # nothing written


def test_output_path_that_is_a_file_is_refused(text_model, tmp_path, capsys):
    path = tmp_path / "a_file"
    path.write_text("mine")
    assert_one_line_error(capsys, main(["inspect", "--checkpoint", text_model, "--prompt", "hi", "--out", str(path)]),
                          "exists and is not a folder")
    assert path.read_text() == "mine"
