"""The benchmark end to end on tiny sizes: its plumbing (every section, JSON, tables, plots), not
its numbers; the flags' defaults; and the ``hypermlp bench`` entry point."""

import json

import pytest
import torch

from hypermlp.bench import build_parser, main
from hypermlp.bench.cli import fill_defaults
from hypermlp.cli import main as hypermlp_main


def test_bench_runs_end_to_end_on_tiny_sizes(tmp_path, capsys):
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
    rows = {(r["T"], r["mixer"]): r for r in res["layer"]["rows"]}
    assert rows[(24, "softmax")]["fwd_bwd_ratio"] == 1.0
    assert rows[(24, "hyperglu-ref")]["peak_extra_bytes"] > 0 and "skipped" in rows[(40, "hyperglu-ref")]["note"]
    assert {r["mixer"] for r in res["decode"]["rows"]} == {"softmax", "relu", "hyperglu", "hypermlp"}
    params = [r["params"] for r in res["lm"]["rows"]]
    assert max(params) - min(params) <= 0.01 * min(params), res["lm"]["matching"]  # matched budgets
    assert any(t["target"].startswith("HyperGLU fwd+bwd") for t in res["targets"])
    printed = capsys.readouterr().out
    assert "| T | mixer |" in printed and "## Targets" in printed
    assert (out / "layer_time.png").exists() and (out / "decode_latency.png").exists()
    assert (out / "bench.md").read_text() == printed
    for key in ("cpu_count", "torch", "torch_threads", "device", "dtype", "loadavg_start", "loadavg_end"):
        assert key in res["machine"], key


def test_one_section_writes_only_its_own_outputs(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["--sections", "decode", "--d-model", "32", "--prompt-len", "8", "--new-tokens", "4",
                 "--repeats", "1", "--no-memory", "--out", str(out)]) == 0
    res = json.loads((out / "bench.json").read_text())
    assert "decode" in res and "layer" not in res and "lm" not in res
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "decode_latency.png"]
    assert "## Decoding one layer" in capsys.readouterr().out


def test_defaults_full_and_quick():
    args = build_parser().parse_args([])
    fill_defaults(args)
    assert args.seq_lens == [512, 1024, 2048, 4096, 8192] and args.repeats == 3 and args.ref_max_len == 512
    assert (args.prompt_len, args.new_tokens, args.lm_seq_len, args.lm_batch, args.lm_steps) == (1536, 512, 1024, 4, 4)
    assert args.mixers == ["softmax", "relu", "hyperglu", "hypermlp", "hyperglu-ref", "hypermlp-ref"]
    assert args.sections == ["layer", "decode", "lm"] and args.out == "runs/bench"
    quick = build_parser().parse_args(["--quick", "--repeats", "5"])
    fill_defaults(quick)
    assert quick.seq_lens == [256, 512] and quick.repeats == 5 and quick.ref_max_len == 256
    assert (quick.prompt_len, quick.new_tokens, quick.lm_seq_len, quick.lm_batch, quick.lm_steps) == (192, 64, 256, 2, 2)


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit, match="--lm-layers must be positive"):
        fill_defaults(build_parser().parse_args(["--lm-layers", "0"]))
    assert hypermlp_main(["bench", "--mixers", "softmax,mamba"]) == 2
    assert "mamba" in capsys.readouterr().err


def test_contenders_is_a_hidden_alias_of_mixers(capsys):
    args = build_parser().parse_args(["--contenders", "softmax,hyperglu"])
    fill_defaults(args)
    assert args.mixers == ["softmax", "hyperglu"] and not hasattr(args, "contenders")
    assert hypermlp_main(["bench", "--contenders", "softmax,mamba"]) == 2  # checked like --mixers
    assert "mamba" in capsys.readouterr().err
    assert "--contenders" not in build_parser().format_help() and "--mixers" in build_parser().format_help()


def test_bench_delegates(capsys):
    assert hypermlp_main(["bench", "--help"]) == 0
    assert "usage" in capsys.readouterr().out.lower()
