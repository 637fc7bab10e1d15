"""``hypermlp compare`` end to end: report, plots and results; named mixers; no clobbering."""

import hashlib
import json
import os

from hypermlp.cli import main


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
    assert [r["id"] for r in results["runs"]] == list(range(12))
    assert len((out / "jobs.jsonl").read_text().splitlines()) == 12
    # a second compare into the same folder does not clobber the report
    before = snapshot(out)
    assert_one_line_error(capsys, main(["compare", "--config", str(cfg), "--out", str(out)]), "--force")
    assert snapshot(out) == before


def test_compare_named_mixers_build_their_own_mixer_arguments(tmp_path, capsys):
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
    # results.json keeps the YAML's own key for named mixers
    assert results["suite"]["variants"] == {"softmax_conv": {"mixer": "softmax", "mixer_args": {"conv_size": 4}}}
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("mixers: [softmax, x]\nvariants: {x: {mixer: transformer}}\ntasks: [{task: lm}]\n")
    assert_one_line_error(capsys, main(["compare", "--config", str(bad), "--out", str(tmp_path / "o")]), "variants", "'x'")
    assert not (tmp_path / "o").exists()


def test_compare_runs_variant_names_under_the_paper_rule(tmp_path, capsys):
    cfg = tmp_path / "suite.yaml"
    cfg.write_text(
        "mixers: [S-pc, R-cg-q-12o, R-12!]\n"
        "budget: {rule: paper}\n"
        "model: {d_model: 32, n_layers: 1, mixer_args: {n_heads: 2}}\n"
        "tasks:\n"
        "  - task: mad:in_context_recall\n"
        "    data: {seq_len: 16, num_train: 64, num_test: 32}\n"
        "    train: {epochs: 1, batch_size: 32}\n"
        "    grid: {lr: [1e-3], weight_decay: [0.0]}\n"
    )
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(cfg), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["suite"]["budget"] == {"rule": "paper", "reference": "S-pc"}
    (budget,) = results["budgets"].values()
    rows = {r["name"]: r for r in budget["rows"]}
    assert rows["S-pc"]["changed"] == "nothing (reference)"
    assert rows["R-12!"]["changed"] == "unmatched (over-parameterised bound)"
    assert abs(rows["R-cg-q-12o"]["params"] - rows["S-pc"]["params"]) <= 0.01 * rows["S-pc"]["params"]
    assert {r["mixer"] for r in results["runs"]} == {"S-pc", "R-cg-q-12o", "R-12!"}
    report = (out / "report.md").read_text()
    assert "Rule `paper`: the reference `S-pc` keeps its configuration" in report
    assert "| R-12! |" in report and "unmatched (over-parameterised bound)" in report
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("mixers: [S-pc, R-12!]\nbudget: {rule: paper, reference: R-12!}\ntasks: [{task: lm}]\n")
    assert_one_line_error(capsys, main(["compare", "--config", str(bad), "--out", str(tmp_path / "o")]),
                          "budget.reference 'R-12!'")
    assert_one_line_error(capsys, main(["compare", "--mixers", "S-pc,S-c-12o", "--out", str(tmp_path / "o")]),
                          "'S-c-12o'", "letter '1'")
    assert not (tmp_path / "o").exists()
