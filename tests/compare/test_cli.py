"""``hypermlp compare`` end to end: report, plots and results; named mixers; no clobbering."""

import json

from hypermlp.cli import main

from ..helpers import assert_one_line_error, snapshot


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
    for needle in ("± ", "test acc % (plain)", "test acc % (macro, MAD)", "Parameter budgets", "torch", "cpu_count",
                   "Seeds: [0, 1]", "MAD mean (2 tasks: in_context_recall, compression)", "## Claims check",
                   "## Compute", "## Per-seed values", "best validation score", "| val_acc |"):
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
        "seeds: [0]\n"
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
    # one seed: every score says n=1, none claims a zero spread
    report = (out / "report.md").read_text()
    assert "(n=1)" in report and "± 0.0" not in report and "one seed: no interval" in report
    # a named mixer stands for the variant it is
    assert {d["mixer"]: d["design"] for d in results["summary"]} == {"softmax": "S-p", "softmax_conv": "S-pc"}
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("mixers: [softmax, x]\nvariants: {x: {mixer: transformer}}\ntasks: [{task: lm}]\n")
    assert_one_line_error(capsys, main(["compare", "--config", str(bad), "--out", str(tmp_path / "o")]), "variants", "'x'")
    assert not (tmp_path / "o").exists()


def test_compare_runs_variant_names_under_the_paper_rule(tmp_path, capsys):
    cfg = tmp_path / "suite.yaml"
    cfg.write_text(
        "mixers: [S-pc, R-cg-q-12o, R-12!]\n"
        "seeds: [0]\n"
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


TINY_STUDY = (
    "mixers: [S-pc, R-pc]\n"
    "seeds: [0, 1, 2]\n"
    "workers: 1\n"
    "budget: {rule: paper}\n"
    "model: {d_model: 32, n_layers: 1, mixer_args: {n_heads: 2}}\n"
    "tasks:\n"
    "  - task: mad:in_context_recall\n"
    "    data: {seq_len: 16, num_train: 64, num_test: 32}\n"
    "    train: {epochs: 1, batch_size: 32}\n"
    "  - task: lm\n"
    "    data: {seq_len: 16, max_bytes: 40000}\n"
    "    train: {steps: 2, batch_size: 4, warmup_steps: 0}\n"
)


def test_a_tiny_two_variant_study_writes_the_claims_section(tmp_path, capsys):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(TINY_STUDY)
    out = tmp_path / "study"
    assert main(["compare", "--config", str(cfg), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    claims = report.split("## Claims check", 1)[1].split("\n## ", 1)[0]
    rows = [l for l in claims.splitlines() if l.startswith("| ") and not l.startswith("| #")]
    by_id = {r.split(" | ")[0][2:]: r for r in rows}
    for cid in ("1a", "1b"):  # S-pc against R-pc: on the MAD mean (1 task) and the LM
        assert by_id[cid].rstrip(" |").split("**")[-2] in ("supported", "not supported", "inconclusive"), by_id[cid]
    assert "MAD mean (1 task), test macro acc %" in by_id["1a"] and "val bits/byte" in by_id["1b"]
    assert "The MAD mean of this table: MAD mean (1 task: in_context_recall)." in claims
    assert "not run (R-cg-q-12o and R-cg-q not in the suite)" in by_id["2"]
    assert len(rows) == 11
    # compute columns, per-seed values
    for needle in ("| task | mixer | params | wall s | train tokens | tokens/s | est. train FLOPs |",
                   "| in_context_recall | test acc % (plain) | S-pc | 3 |", "0: ", "2: "):
        assert needle in report, needle
    results = json.loads((out / "results.json").read_text())
    claims_json = {c["id"]: c for c in results["claims"]}
    assert claims_json["1a"]["winner_mixer"] == "R-pc" and len(claims_json["1a"]["winner_score"]["values"]) == 3
    assert claims_json["2"]["verdict"] == "not run"
    row = next(r for r in results["summary"] if r["task"] == "in_context_recall" and r["mixer"] == "S-pc")
    assert row["test_acc"]["n"] == 3 and len(row["test_acc"]["values"]) == 3 and row["test_acc"]["ci95"] > 0
    comp = next(r for r in results["compute"] if r["task"] == "lm" and r["mixer"] == "R-pc")
    assert comp["train_tokens"]["mean"] == 2 * 4 * 16 and comp["train_flops"]["mean"] > 0
    assert comp["train_tokens_per_s"]["mean"] > 0 and comp["train_wall_s"]["mean"] > 0
    assert results["selection"]["metric"] == {"in_context_recall": "val_acc", "lm": "val_loss"}
    assert results["mad_mean"]["tasks"] == ["in_context_recall"]


def test_validation_selection_never_reads_test_labels(tmp_path, monkeypatch, capsys):
    """Corrupting every test label changes the test scores and leaves the chosen grid points
    (and everything they were chosen on) unchanged."""
    import torch

    from hypermlp.compare import jobs

    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        "mixers: [S-pc, R-cg-q]\nseeds: [0, 1]\nworkers: 1\nbudget: {rule: paper}\n"
        "model: {d_model: 32, n_layers: 1, mixer_args: {n_heads: 2}}\n"
        "tasks:\n"
        "  - task: mad:in_context_recall\n"
        "    data: {seq_len: 16, num_train: 128, num_test: 64, num_val: 64}\n"
        "    train: {epochs: 2, batch_size: 32, early_stop_at: null}\n"
        "    grid: {lr: [3e-4, 3e-3, 1e-2], weight_decay: [0.0, 0.1]}\n"
    )

    def run(out):
        assert main(["compare", "--config", str(cfg), "--out", str(out)]) == 0
        res = json.loads((out / "results.json").read_text())
        return res, {(k["mixer"], k["seed"]): (k["lr"], k["weight_decay"], k["value"]) for k in res["selected"]}

    clean, chosen = run(tmp_path / "clean")
    real_build = jobs.build_task

    def corrupted_build(*args, **kwargs):
        task, resolved = real_build(*args, **kwargs)
        t = task.data.test_targets
        scored = t != -100
        g = torch.Generator().manual_seed(1)
        t = t.clone()
        t[scored] = torch.randint(0, task.vocab_size, (int(scored.sum()),), generator=g)
        task.data.test_targets = t
        return task, resolved

    monkeypatch.setattr(jobs, "build_task", corrupted_build)
    dirty, chosen_dirty = run(tmp_path / "dirty")
    assert chosen_dirty == chosen and len(chosen) == 2 * 2
    assert all(k["metric"] == "val_acc" for k in dirty["selected"])
    tests = lambda res: [r["final"]["test_acc"] for r in res["runs"]]  # noqa: E731
    vals = lambda res: [r["final"]["val_acc"] for r in res["runs"]]  # noqa: E731
    assert vals(dirty) == vals(clean) and tests(dirty) != tests(clean)

