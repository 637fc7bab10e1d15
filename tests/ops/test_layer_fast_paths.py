"""(moving to tests/bench) The benchmark's plumbing."""

import torch


def test_bench_runs_end_to_end_on_tiny_sizes(tmp_path, capsys):
    """The benchmark's plumbing (every section, JSON, tables, plots), not its numbers."""
    import json

    from hypermlp.bench import main

    out = tmp_path / "bench"
    threads = torch.get_num_threads()
    code = main([
        "--seq-lens", "24,40", "--ref-max-len", "24", "--d-model", "64", "--repeats", "1",
        "--prompt-len", "12", "--new-tokens", "4", "--lm-seq-len", "16", "--lm-batch", "1",
        "--lm-steps", "1", "--threads", "1", "--out", str(out),
    ])
    assert code == 0
    assert torch.get_num_threads() == threads  # restored
    res = json.loads((out / "bench.json").read_text())
    rows = {(r["T"], r["contender"]): r for r in res["layer"]["rows"]}
    assert rows[(24, "softmax")]["fwd_bwd_ratio"] == 1.0
    assert rows[(24, "hyperglu-ref")]["peak_extra_bytes"] > 0 and "skipped" in rows[(40, "hyperglu-ref")]["note"]
    assert {r["contender"] for r in res["decode"]["rows"]} == {"softmax", "relu", "hyperglu", "hypermlp"}
    params = [r["params"] for r in res["lm"]["rows"]]
    assert max(params) - min(params) <= 0.01 * min(params), res["lm"]["matching"]  # matched budgets
    assert any(t["target"].startswith("HyperGLU fwd+bwd") for t in res["targets"])
    printed = capsys.readouterr().out
    assert "| T | contender |" in printed and "## Targets" in printed
    assert (out / "layer_time.png").exists() and (out / "decode_latency.png").exists()
