"""The benchmark's outputs: markdown tables (printed and written to bench.md) and PNG plots."""

from __future__ import annotations

import json
import os
from typing import List, Optional

from .measure import MIB
from .mixers import LAYER_MIXERS


def fmt_ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else (f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds:.1f}s")


def fmt_mib(nbytes: Optional[int]) -> str:
    return "-" if nbytes is None else f"{nbytes / MIB:.1f}"


def fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown_table(headers: List[str], rows: List[List[str]]) -> str:
    """A markdown table, the first column left-aligned and the others right-aligned."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- tables
def format_layer_table(res: dict) -> str:
    headers = ["T", "mixer", "fwd ms", "x sm", "fwd+bwd ms", "x sm", "peak MiB", "x sm", "saved MiB", "note"]
    rows = [[
        str(r["T"]), r["mixer"], fmt_ms(r.get("fwd_s")), fmt_ratio(r.get("fwd_ratio")),
        fmt_ms(r.get("fwd_bwd_s")), fmt_ratio(r.get("fwd_bwd_ratio")), fmt_mib(r.get("peak_extra_bytes")),
        fmt_ratio(r.get("peak_extra_ratio")), fmt_mib(r.get("saved_bytes")), r.get("note", ""),
    ] for r in res["rows"]]
    return markdown_table(headers, rows)


def format_decode_table(res: dict) -> str:
    headers = ["mixer", "prefill ms", "cached ms/token (median)", "x sm", "recompute ms/token (mean)", "cached speed-up"]
    rows = [[
        r["mixer"], fmt_ms(r["prefill_s"]), f"{r['cached_median_s'] * 1e3:.2f}", fmt_ratio(r.get("cached_ratio")),
        f"{r['recompute_mean_s'] * 1e3:.1f}", f"{r['speedup_vs_recompute']:.0f}x",
    ] for r in res["rows"]]
    return markdown_table(headers, rows)


def format_lm_table(res: dict) -> str:
    headers = ["mixer", "params", "mixer args", "mlp_hidden", "tokens/s", "x sm", "step ms", "peak MiB", "x sm"]
    rows = [[
        r["mixer"], f"{r['params']:,}", json.dumps(r["mixer_args"]) if r["mixer_args"] else "defaults",
        str(r["mlp_hidden"]), f"{r['tokens_per_s']:.0f}", fmt_ratio(r["throughput_ratio"]), fmt_ms(r["step_s"]),
        fmt_mib(r["peak_extra_bytes"]), fmt_ratio(r.get("peak_extra_ratio")),
    ] for r in res["rows"]]
    return markdown_table(headers, rows)


def format_gpu_tables(res: dict) -> List[str]:
    """One table per shape: time, memory and decode step of each contender, ratios to softmax (x sm),
    the Triton core's speed-up over the chunked one (fwd+bwd)."""
    headers = ["T", "mixer", "fwd ms", "x sm", "fwd+bwd ms", "x sm", "peak MiB", "x sm", "decode ms", "x sm",
               "triton speed-up", "finite", "note"]
    parts = []
    for d, heads, batch in res["shapes"]:
        key = f"{d}x{heads}x{batch}"
        parts.append(f"\n### d_model {d}, {heads} HyperGLU heads, batch {batch}\n")
        parts += [f"- {n}: {c}" for n, c in res["configs"].get(key, {}).items()]
        rows = [[
            str(r["T"]), r["mixer"], fmt_ms(r.get("fwd_s")), fmt_ratio(r.get("fwd_ratio")),
            fmt_ms(r.get("fwd_bwd_s")), fmt_ratio(r.get("fwd_bwd_ratio")), fmt_mib(r.get("peak_extra_bytes")),
            fmt_ratio(r.get("peak_ratio")), "-" if r.get("decode_s") is None else f"{r['decode_s'] * 1e3:.2f}",
            fmt_ratio(r.get("decode_ratio")), fmt_ratio(r.get("triton_fwd_bwd_speedup")),
            "-" if "finite" not in r else ("yes" if r["finite"] else "NO"), r.get("note", ""),
        ] for r in res["rows"] if (r["d_model"], r["heads"], r["batch"]) == (d, heads, batch)]
        parts += ["", markdown_table(headers, rows)]
    return parts


def format_targets(targets: List[dict]) -> str:
    rows = []
    for t in targets:
        if t["value"] is None:
            status = "n/a (not measured)"
        elif not t.get("setting_ok", True):
            status = "n/a (other setting than the target's)"
        else:
            status = "met" if t["met"] else "MISSED"
        rows.append([t["target"], "-" if t["value"] is None else f"{t['value']:.2f}", status])
    return markdown_table(["target", "measured", "status"], rows)


def format_report(results: dict, args) -> str:
    """The whole markdown text: a machine line, then one section per section run, then targets."""
    parts = []
    if "layer" in results:
        layer = results["layer"]
        parts.append(f"## Layer: batch {args.batch}, d_model {args.d_model}, {args.dtype}, times are the min of {args.repeats} runs\n")
        parts += [f"- {n}: {c} ({layer['params'][n]:,} params)" for n, c in layer["config"].items()]
        parts += ["", format_layer_table(layer)]
    if "decode" in results:
        parts.append(f"\n## Decoding one layer: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens\n")
        parts.append(format_decode_table(results["decode"]))
    if "lm" in results:
        lm = results["lm"]
        parts.append(f"\n## LM training: {lm['n_layers']} layers, d_model {args.d_model}, batch {lm['batch']} x {lm['seq_len']}, "
                     f"AdamW, times are the min of {args.lm_steps} steps; parameters {lm['matching']}\n")
        parts.append(format_lm_table(lm))
    if "gpu" in results:
        gpu = results["gpu"]
        parts.append(f"\n## GPU: Triton HyperGLU, chunked HyperGLU, SDPA softmax; {gpu['device']}, {gpu['dtype']}, "
                     f"times are the min of {args.repeats} runs, decode: the median of {args.gpu_decode_steps} steps "
                     "after T cached tokens\n")
        parts += format_gpu_tables(gpu)
    if results.get("targets"):
        parts += ["\n## Targets\n", format_targets(results["targets"])]
    m = results["machine"]
    header = (f"Machine: {m.get('cpu', m.get('processor'))}, {m.get('cpu_count')} CPUs, torch {m.get('torch')} "
              f"({m.get('torch_threads')} threads), device {m.get('device')}, {m.get('dtype')}; load average "
              f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end\n" if "loadavg_end" in m else "")
    return header + "\n".join(parts)


# --------------------------------------------------------------------------------------- plots
def make_plots(results: dict, out_dir: str) -> List[str]:
    """PNG plots of whatever sections ran; returns their paths (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # plotting is optional
        print(f"(plots skipped: matplotlib unavailable: {e})")
        return []

    def save(fig, name: str) -> str:
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    files = []
    if results.get("layer"):
        files += [save(fig, name) for fig, name in _layer_plots(plt, results["layer"])]
    if results.get("decode"):
        files.append(save(_decode_plot(plt, results["decode"]), "decode_latency.png"))
    if results.get("lm"):
        files.append(save(_lm_plot(plt, results["lm"]), "lm_throughput.png"))
    return files


def _layer_plots(plt, layer: dict):
    """Time and memory against T, one line per mixer, log-log."""
    names = sorted({r["mixer"] for r in layer["rows"]}, key=LAYER_MIXERS.index)
    for key, label, name in (("fwd_bwd_s", "forward+backward time (s)", "layer_time.png"),
                             ("fwd_s", "forward time (s)", "layer_fwd_time.png"),
                             ("peak_extra_bytes", "peak extra memory, fwd+bwd (MiB)", "layer_memory.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in names:
            points = [(r["T"], r[key]) for r in layer["rows"] if r["mixer"] == n and r.get(key)]
            if points:
                xs, ys = zip(*points)
                ys = [y / MIB for y in ys] if key.endswith("bytes") else ys
                ax.plot(xs, ys, marker="o", label=n)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.set_title(f"one layer, d={layer['d_model']}, batch {layer['batch']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        yield fig, name


def _decode_plot(plt, decode: dict):
    """Cached per-token latency against context (solid) and recompute (dashed), per mixer."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (n, curve) in enumerate(decode["curves"].items()):
        color = f"C{i}"
        xs, ys = zip(*curve["cached"])
        ax.plot(xs, [y * 1e3 for y in ys], color=color, label=f"{n} (cache)")
        xs, ys = zip(*curve["recompute"])
        ax.plot(xs, [y * 1e3 for y in ys], color=color, linestyle="--", marker="x", label=f"{n} (recompute)")
    ax.set_yscale("log")
    ax.set_xlabel("context length")
    ax.set_ylabel("ms per token")
    ax.set_title("decoding one layer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _lm_plot(plt, lm: dict):
    """Training tokens/s per mixer."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([r["mixer"] for r in lm["rows"]], [r["tokens_per_s"] for r in lm["rows"]])
    ax.set_ylabel("training tokens / s")
    ax.set_title(f"LM, {lm['n_layers']} layers, batch {lm['batch']} x {lm['seq_len']}")
    return fig
