"""The GPU section (bench/gpu.py) on tiny CPU sizes: its plumbing (rows, ratios, the Triton
contender's note, tables, JSON, targets), not its numbers; its targets judged only on CUDA in bf16
at the authors' shape; and --device cuda without CUDA refused in one line."""

import argparse
import json

import pytest
import torch

from hypermlp.bench import build_parser, main
from hypermlp.bench.cli import fill_defaults
from hypermlp.bench.report import format_targets
from hypermlp.bench.targets import check_targets
from hypermlp.cli import main as hypermlp_main



def assert_one_line(capsys, needle):
    """The bench's usage errors: exit 2 (checked by the caller), one line on stderr, no traceback."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hypermlp bench: error: ") and needle in lines[0], lines


def test_gpu_section_runs_on_cpu_at_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["--sections", "gpu", "--gpu-shapes", "32x2x1", "--gpu-seq-lens", "12,20", "--gpu-decode-steps", "2",
                 "--repeats", "1", "--threads", "1", "--out", str(out)])
    assert code == 0
    res = json.loads((out / "bench.json").read_text())
    assert set(res) >= {"gpu", "targets"} and "layer" not in res
    rows = {(r["T"], r["mixer"]): r for r in res["gpu"]["rows"]}
    assert set(rows) == {(t, m) for t in (12, 20) for m in ("softmax", "hyperglu-chunked", "hyperglu-triton")}
    for t in (12, 20):
        sm, glu = rows[(t, "softmax")], rows[(t, "hyperglu-chunked")]
        assert sm["fwd_bwd_ratio"] == sm["decode_ratio"] == sm["peak_ratio"] == 1.0
        assert glu["finite"] and glu["decode_s"] > 0 and glu["peak_extra_bytes"] > 0
        assert glu["fwd_bwd_ratio"] == pytest.approx(glu["fwd_bwd_s"] / sm["fwd_bwd_s"])
        assert "not available" in rows[(t, "hyperglu-triton")]["note"]  # no Triton on a CPU
    assert "1 heads of 32, SDPA" in res["gpu"]["configs"]["32x2x1"]["softmax"]
    assert [t["value"] for t in res["targets"]] == [None] * 4
    printed = capsys.readouterr().out
    assert "## GPU: Triton HyperGLU" in printed and "### d_model 32, 2 HyperGLU heads, batch 1" in printed


def test_default_sections_and_shapes_follow_the_device():
    args = build_parser().parse_args(["--device", "cuda", "--dtype", "bf16"])
    fill_defaults(args)
    assert args.sections == ["gpu"] and args.gpu_shapes == [(1024, 2, 4), (256, 2, 4)]
    assert args.gpu_seq_lens == [1024, 2048, 4096, 8192, 16384]
    cpu = build_parser().parse_args([])
    fill_defaults(cpu)
    assert cpu.sections == ["layer", "decode", "lm"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_cuda_is_one_line_exit_2(capsys):
    assert hypermlp_main(["bench", "--device", "cuda", "--dtype", "bf16"]) == 2
    assert_one_line(capsys, "CUDA is not available")


def test_bad_gpu_shapes_are_refused(capsys):
    assert hypermlp_main(["bench", "--gpu-shapes", "1024x2"]) == 2
    assert_one_line(capsys, "D_MODELxHEADSxBATCH")


def _gpu_results(device="cuda:0", dtype="bf16"):
    rows = []
    for t, peak in ((4096, 100), (8192, 205)):
        rows += [dict(d_model=1024, heads=2, batch=4, T=t, mixer="hyperglu-triton", peak_extra_bytes=peak,
                      fwd_bwd_ratio=1.5, decode_ratio=1.7, triton_fwd_bwd_speedup=4.0)]
    return {"gpu": {"device": device, "dtype": dtype, "shapes": [[1024, 2, 4], [256, 2, 4]], "rows": rows}}


def test_gpu_targets_judged_only_in_their_setting():
    args = argparse.Namespace(d_model=256, batch=2, dtype="bf16", lm_match="mlp")
    rows = check_targets(_gpu_results(), args)
    assert [r["met"] for r in rows] == [True, True, False, True]
    assert rows[1]["value"] == pytest.approx(2.05)
    assert "| MISSED |" in format_targets(rows)
    for other in (_gpu_results(device="cpu"), _gpu_results(dtype="fp32")):
        assert all(r["met"] is None and not r["setting_ok"] for r in check_targets(other, args))
