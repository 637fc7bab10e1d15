"""End-to-end CLI: train -> generate, compare -> report, and one-line errors that change nothing."""

import hashlib
import importlib.util
import json
import os

import pytest
import torch

from hypermlp.cli import main
from hypermlp.train import latest_checkpoint, read_metrics

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(400))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERMLP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CI", "true")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def lm_args(corpus, out, *extra):
    return ["train", "--task", "lm", "--data", corpus, "--seq-len", "32", "--d-model", "32", "--steps", "12",
            "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "2", "--max-len", "64", "--out", str(out),
            "--data-arg", "eval_windows=4", *extra]


def snapshot(folder):
    """Content hash of every file under folder (to prove nothing was touched)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def assert_one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("hypermlp: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_for_every_subcommand(capsys):
    for cmd in (["--help"], ["train", "--help"], ["compare", "--help"], ["generate", "--help"]):
        assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--max-new-tokens" in out and "{train,compare,generate,bench}" in out


def test_train_then_generate(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--ckpt-every", "5")) == 0
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs if r["type"] == "train"] == list(range(1, 13))
    final = [r for r in recs if r["type"] == "eval"][-1]
    assert final["val_loss"] > 0 and final["val_bpb"] > 0
    ckpt = latest_checkpoint(str(out))
    assert ckpt.endswith("step-00000012")
    assert sorted(os.listdir(ckpt)) == ["config.json", "model.safetensors", "trainer_state.pt"]
    capsys.readouterr()

    args = ["generate", "--checkpoint", str(out), "--prompt", "def f1", "--max-new-tokens", "20", "--temperature", "0"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("def f1")
    assert main(args) == 0
    assert capsys.readouterr().out == text  # greedy: deterministic
    assert main(args[:-2] + ["--temperature", "1.0", "--top-k", "5", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("def f1")


def test_bpe_tokenizer_travels_with_the_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "bpe"
    assert main(lm_args(corpus, out, "--tokenizer", "bpe", "--data-arg", "bpe_vocab_size=300")) == 0
    ckpt = latest_checkpoint(str(out))
    assert "tokenizer.json" in os.listdir(ckpt)
    assert json.load(open(os.path.join(ckpt, "config.json")))["vocab_size"] > 256
    capsys.readouterr()
    assert main(["generate", "--checkpoint", ckpt, "--prompt", "def f2", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("def f2")


def test_yaml_config_with_flag_overrides(tmp_path, corpus):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "task: lm\n"
        f"data: {{path: {corpus}, seq_len: 16, eval_windows: 2}}\n"
        "model: {d_model: 32, n_layers: 1, mixer: softmax, mixer_args: {n_heads: 2}}\n"
        "train: {steps: 9, batch_size: 4, lr: 1e-3, warmup_steps: 0}\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--steps", "3", "--mixer", "hypermlp", "--out", str(out)]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"] == [1, 2, 3]
    saved = json.loads(open(os.path.join(latest_checkpoint(str(out)), "config.json")).read())
    assert saved["mixer"] == "hypermlp" and saved["n_layers"] == 1 and saved["max_len"] == 16
    assert [r["lr"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"][0] == pytest.approx(1e-3)


def test_resume_continues_and_refuses_overwrite(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "6", "--ckpt-every", "3")) == 0
    before = snapshot(out)
    capsys.readouterr()
    # same folder again without --resume / --force: refused, nothing touched
    assert_one_line_error(capsys, main(lm_args(corpus, out)), "already holds a run", "--resume")
    assert snapshot(out) == before
    # --resume with a longer run continues from step 6
    assert main(lm_args(corpus, out, "--resume")) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"]
    assert steps == list(range(1, 13))
    # --force starts over
    assert main(lm_args(corpus, out, "--steps", "2", "--force")) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"] == [1, 2]


def test_compare_writes_report_plots_and_results(tmp_path, capsys):
    cfg = tmp_path / "suite.yaml"
    cfg.write_text(
        "mixers: [softmax, hyperglu]\n"
        "seeds: [0, 1]\n"
        "workers: 1\n"
        "model: {d_model: 32, n_layers: 2, mixer_args: {n_heads: 2}}\n"
        "tasks:\n"
        "  - task: mad:in_context_recall\n"
        "    data: {seq_len: 16, num_train: 64, num_test: 32}\n"
        "    train: {epochs: 2, batch_size: 32}\n"
        "    grid: {lr: [1e-3, 3e-3]}\n"
        "  - task: mad:compression\n"
        "    data: {seq_len: 8, num_train: 64, num_test: 32}\n"
        "    train: {epochs: 1, batch_size: 32}\n"
    )
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "qk_rank" in printed and "changed" in printed  # every model's count and what changed
    for f in ("report.md", "results.json", "loss_curves.png", "scores.png"):
        assert (out / f).stat().st_size > 0, f
    assert open(out / "loss_curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    for needle in ("± ", "acc % (plain)", "acc % (macro, MAD)", "Parameter budgets", "torch", "cpu_count", "Seeds: [0, 1]"):
        assert needle in report, needle
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 2 * 2 * 2 + 2 * 2  # recall: 2 lrs; compression: 1
    for rows in (b["rows"] for b in results["budgets"].values()):
        counts = [r["params"] for r in rows]
        assert max(counts) <= 1.01 * min(counts)
    # a second compare into the same folder does not clobber the report
    before = snapshot(out)
    assert_one_line_error(capsys, main(["compare", "--config", str(cfg), "--out", str(out)]), "--force")
    assert snapshot(out) == before


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


def test_mismatched_checkpoint_is_refused_and_left_alone(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "3")) == 0
    before = snapshot(out)
    capsys.readouterr()
    # resume with another model shape
    assert_one_line_error(capsys, main(lm_args(corpus, out, "--resume", "--d-model", "48")), "another model", "d_model")
    assert snapshot(out) == before
    # a checkpoint whose weights do not match its config.json
    ckpt = latest_checkpoint(str(out))
    cfg_path = os.path.join(ckpt, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["d_model"] = 48
    json.dump(cfg, open(cfg_path, "w"))
    tampered = snapshot(out)
    assert_one_line_error(capsys, main(["generate", "--checkpoint", ckpt, "--prompt", "x"]), "does not match")
    assert_one_line_error(capsys, main(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"]), "no such")
    assert snapshot(out) == tampered


def test_bench_delegates_or_explains(capsys):
    if importlib.util.find_spec("hypermlp.bench") is None:
        assert_one_line_error(capsys, main(["bench"]), "hypermlp.bench")
    else:
        assert main(["bench", "--help"]) == 0
        assert "usage" in capsys.readouterr().out.lower()


def test_compare_variants_build_their_own_mixer_arguments(tmp_path):
    cfg = tmp_path / "suite.yaml"
    cfg.write_text(
        "mixers: [softmax, softmax_conv]\n"
        "variants: {softmax_conv: {mixer: softmax, mixer_args: {conv_size: 4}}}\n"
        "model: {d_model: 32, n_layers: 1, mixer_args: {n_heads: 2}}\n"
        "tasks:\n"
        "  - task: mad:in_context_recall\n"
        "    data: {seq_len: 16, num_train: 64, num_test: 32}\n"
        "    train: {epochs: 1, batch_size: 32}\n"
    )
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(cfg), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for b in results["budgets"].values() for r in b["rows"]}
    assert set(rows) == {"softmax", "softmax_conv"}
    # the conv adds 2 * d * kernel parameters before matching, so the plain softmax is the one grown
    assert rows["softmax_conv"]["params_before"] - rows["softmax"]["params_before"] == 2 * 32 * 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("mixers: [softmax, x]\nvariants: {x: {mixer: transformer}}\ntasks: [{task: lm}]\n")
    assert main(["compare", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_resume_from_the_run_folder_alone(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "4", "--ckpt-every", "2")) == 0
    # only --out and --resume: task, data, model and training settings come from run.yaml
    assert main(["train", "--out", str(out), "--resume", "--steps", "6"]) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"]
    assert steps == list(range(1, 7))
    capsys.readouterr()
    assert_one_line_error(capsys, main(["train", "--out", str(tmp_path / "none"), "--resume"]), "no run to resume")
