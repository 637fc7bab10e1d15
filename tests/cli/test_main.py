"""``hypermlp`` itself: help for every subcommand, and every user mistake ends as one line."""

import pytest

from hypermlp.cli import main

from ..helpers import assert_one_line_error


def test_help_for_every_subcommand(capsys):
    for cmd in (["--help"], ["train", "--help"], ["compare", "--help"], ["generate", "--help"]):
        assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--max-new-tokens" in out and "{train,prepare,compare,generate,inspect,export-hf,eval,bench}" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--task", "mad:nonsense"], "unknown task 'mad:nonsense'"),
        (["train", "--task", "lm", "--mixer", "mamba"], "unknown mixer 'mamba'"),
        (["train", "--task", "lm", "--data", "/does/not/exist.txt"], "no such file"),
        (["compare", "--mixers", "softmax,mamba"], "unknown mixer 'mamba'"),
        (["train", "--task", "lm", "--steps", "zero"], "invalid int value"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    code = main(argv + ["--out", str(out)])
    assert_one_line_error(capsys, code, needle)
    assert not out.exists()


def test_empty_data_and_bad_yaml(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(capsys, main(["train", "--task", "lm", "--data", str(empty), "--out", str(tmp_path / "o")]), "empty")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: lm\nmodel: {d_model: [32\n")
    assert_one_line_error(capsys, main(["train", "--config", str(bad), "--out", str(tmp_path / "o")]), "bad YAML", "bad.yaml")
    assert_one_line_error(capsys, main(["compare", "--config", str(bad), "--out", str(tmp_path / "o")]), "bad YAML")
    typo = tmp_path / "typo.yaml"
    typo.write_text("task: lm\ntrian: {steps: 3}\n")
    assert_one_line_error(capsys, main(["train", "--config", str(typo), "--out", str(tmp_path / "o")]), "trian")
    assert not (tmp_path / "o").exists()
