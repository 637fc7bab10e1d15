"""Fast paths of the Hyper core against the readable reference (CPU, float64, seconds).

Covers the chunked core's hand-written backward (every input, table and gate), the skew done
inside the score matmul, the one-token decode path, and the shifted-add depthwise conv. No
timing assertions: speed is the benchmark's business (``hypermlp bench``).
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from hypermlp.layers import HyperGLU, HyperMLP
from hypermlp.layers.common import CausalDepthwiseConv
from hypermlp.ops import hyper_core_chunked, hyper_core_reference, skew
from hypermlp.ops.hyper_chunked import _HyperChunkedFn, _Plan

DT = torch.float64
NAMES = "q k v s1 s2 A1 B1 p1 A2 B2 p2".split()


def make(glu, batch=2, heads=2, t=9, offset=0, dk=3, dv=4, r=3, max_len=20, padding=False, mixes=(True, True), seed=0):
    g = torch.Generator().manual_seed(seed)
    hq = 2 * heads if glu else heads
    s = offset + t

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=DT) * scale).requires_grad_()

    q, k, v = rnd(batch, hq, t, dk), rnd(batch, hq, s, dk), rnd(batch, heads, s, dv)
    s1 = torch.rand(batch, hq, t, r, generator=g, dtype=DT).requires_grad_() if mixes[0] else None
    s2 = torch.rand(batch, heads, t, r, generator=g, dtype=DT).requires_grad_() if mixes[1] else None
    mix1 = (rnd(hq, max_len, r, scale=0.4), rnd(hq, max_len, r, scale=0.4), rnd(hq, max_len, scale=0.4)) if mixes[0] else None
    mix2 = (rnd(heads, max_len, r, scale=0.4), rnd(heads, max_len, r, scale=0.4), rnd(heads, max_len, scale=0.4)) if mixes[1] else None
    key_valid = None
    if padding:  # left padding of a different length per row, plus a hole in the middle
        key_valid = torch.ones(batch, s, dtype=torch.bool)
        for b in range(batch):
            key_valid[b, : (2 * b + 1) % max(s - 1, 1)] = False
        key_valid[:, s // 2] = False
        key_valid[:, -1] = True
    return (q, k, v, s1, s2, mix1, mix2), key_valid


def leaves(args):
    q, k, v, s1, s2, mix1, mix2 = args
    out = [q, k, v, s1, s2]
    for m in (mix1, mix2):
        out += list(m) if m is not None else [None] * 3
    return out


def call(fn, args, glu, layout, offset, key_valid, **kw):
    return fn(*args, glu=glu, layout=layout, offset=offset, key_valid=key_valid, **kw)


def check_against_reference(glu, layout, offset, padding, mixes, t, batch, chunks, seed=0):
    args, key_valid = make(glu, batch=batch, t=t, offset=offset, padding=padding, mixes=mixes, seed=seed)
    ref = call(hyper_core_reference, args, glu, layout, offset, key_valid)
    grad_out = torch.randn_like(ref)
    params = [x for x in leaves(args) if x is not None]
    ref_grads = torch.autograd.grad(ref, params, grad_out)
    names = [n for n, x in zip(NAMES, leaves(args)) if x is not None]
    for chunk in chunks:
        out = call(hyper_core_chunked, args, glu, layout, offset, key_valid, chunk_size=chunk)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=f"output, chunk {chunk}")
        grads = torch.autograd.grad(out, params, grad_out)
        for name, g, gr in zip(names, grads, ref_grads):
            torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-10, msg=f"grad of {name}, chunk {chunk}")
        with torch.no_grad():  # the no-grad forward is a separate (in-place) path
            out_ng = call(hyper_core_chunked, args, glu, layout, offset, key_valid, chunk_size=chunk)
        torch.testing.assert_close(out_ng, ref, rtol=1e-10, atol=1e-10, msg=f"no-grad output, chunk {chunk}")


@pytest.mark.parametrize("glu,layout,padding", list(itertools.product([False, True], ["lag", "left"], [False, True])))
@pytest.mark.parametrize("offset", [0, 4])
def test_chunked_matches_reference_every_gradient(glu, layout, padding, offset):
    # chunk 2 and 4 do not divide T = 9; 9 is one block; 64 is larger than T
    check_against_reference(glu, layout, offset, padding, (True, True), t=9, batch=2, chunks=(1, 2, 4, 9, 64), seed=offset)


@pytest.mark.parametrize("mixes", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("glu,layout", [(False, "lag"), (True, "lag"), (True, "left")])
def test_chunked_matches_reference_mixings_off(mixes, glu, layout):
    check_against_reference(glu, layout, 3, True, mixes, t=7, batch=2, chunks=(3, 7))


@pytest.mark.parametrize("glu,layout,padding", [(False, "lag", False), (True, "lag", True), (True, "left", True)])
def test_single_query_with_gradients(glu, layout, padding):
    # T = 1 with gradients takes the chunked Function (the decode path is no-grad only)
    for offset in (0, 1, 6):
        check_against_reference(glu, layout, offset, padding, (True, True), t=1, batch=3, chunks=(1, 4))


@pytest.mark.parametrize("glu,layout", list(itertools.product([False, True], ["lag", "left"])))
@pytest.mark.parametrize("padding", [False, True])
def test_decode_step_matches_reference(glu, layout, padding):
    for offset, mixes in itertools.product((0, 1, 7, 15), [(True, True), (False, True), (True, False)]):
        args, key_valid = make(glu, batch=2, t=1, offset=offset, padding=padding and offset > 0, mixes=mixes, seed=offset)
        with torch.no_grad():
            ref = call(hyper_core_reference, args, glu, layout, offset, key_valid)
            out = call(hyper_core_chunked, args, glu, layout, offset, key_valid)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c,w", [(1, 1), (1, 6), (3, 3), (4, 9), (5, 12)])
def test_skew_inside_the_score_matmul(c, w):
    """The lag layout read as a strided view of x @ [zeros; keys]^T equals skew(x @ keys^T)."""
    g = torch.Generator().manual_seed(c * 13 + w)
    chunk = 5
    x = torch.randn(3, 2, c, 4, generator=g, dtype=DT)
    keys = torch.randn(3, 2, w, 4, generator=g, dtype=DT)
    pad = _Plan.pad_for("lag", chunk)
    keys_p = torch.cat([keys.new_zeros(3, 2, pad, 4), keys], dim=2)
    plan = _Plan.__new__(_Plan)
    plan.lag, plan.pad, plan.batch = True, pad, 2
    z = plan.scores(x, keys_p, c, w)
    expect = skew(x @ keys.transpose(-1, -2))
    torch.testing.assert_close(z, expect, rtol=0, atol=1e-12)


GRADCHECK_CASES = [
    (False, "lag", (True, True), True, 2),
    (True, "lag", (True, True), True, 3),
    (True, "left", (True, True), True, 2),
    (False, "left", (True, True), False, 4),
    (True, "lag", (False, True), False, 2),
    (True, "lag", (True, False), True, 2),
    (False, "lag", (False, False), True, 3),
]


@pytest.mark.parametrize("glu,layout,mixes,padding,chunk", GRADCHECK_CASES)
def test_hand_written_backward_gradcheck(glu, layout, mixes, padding, chunk):
    offset = 2
    args, key_valid = make(glu, batch=2, heads=1, t=5, offset=offset, dk=2, dv=2, r=2, max_len=8,
                           padding=padding, mixes=mixes, seed=chunk)
    inputs = leaves(args)
    present = [i for i, x in enumerate(inputs) if x is not None]

    def fn(*xs):
        full = [None] * len(inputs)
        for i, x in zip(present, xs):
            full[i] = x
        return _HyperChunkedFn.apply(key_valid, (offset, chunk, glu, layout, 1e-12), *full)

    assert torch.autograd.gradcheck(fn, tuple(inputs[i] for i in present), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_depthwise_conv_matches_conv1d(kernel):
    torch.manual_seed(kernel)
    conv = CausalDepthwiseConv(6, kernel).double()
    x = torch.randn(2, 9, 6, dtype=DT, requires_grad=True)
    y, state = conv(x)
    xt = torch.cat([x.new_zeros(2, kernel - 1, 6), x], dim=1)
    ref = F.conv1d(xt.transpose(1, 2), conv.weight, groups=6).transpose(1, 2)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    assert state.shape == (2, kernel - 1, 6)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, conv.weight), gy)
    rx, rw = torch.autograd.grad(ref, (x, conv.weight), gy)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    # streaming in pieces with the carried state gives the same result, also one step at a time
    y1, s1 = conv(x[:, :4])
    y2, _ = conv(x[:, 4:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), ref, rtol=1e-12, atol=1e-12)
    state, steps = None, []
    for i in range(x.shape[1]):
        yi, state = conv(x[:, i : i + 1], state)
        steps.append(yi)
    torch.testing.assert_close(torch.cat(steps, dim=1), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,layout", [(HyperGLU, "lag"), (HyperMLP, "lag"), (HyperGLU, "left")])
def test_layer_cached_decode_equals_parallel_forward(cls, layout):
    torch.manual_seed(0)
    layer = cls(d_model=16, n_heads=2, max_len=24, seq_rank=3, chunk_size=4, layout=layout).double()
    with torch.no_grad():  # make the tables matter
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 13, 16, dtype=DT)
    with torch.no_grad():
        full = layer(x)
        cache = layer.new_cache(2)
        parts = [layer(x[:, :6], cache=cache)] + [layer(x[:, i : i + 1], cache=cache) for i in range(6, 13)]
    stepped = torch.cat(parts, dim=1)
    if layout == "lag":
        torch.testing.assert_close(stepped, full, rtol=1e-10, atol=1e-10)
    else:  # left layout: only the last position of each call coincides with the parallel forward
        torch.testing.assert_close(stepped[:, -1], full[:, -1], rtol=1e-10, atol=1e-10)


def test_reference_and_chunked_layers_agree_in_training():
    torch.manual_seed(1)
    fast = HyperGLU(d_model=16, n_heads=2, max_len=16, seq_rank=3, chunk_size=3).double()
    ref = HyperGLU(d_model=16, n_heads=2, max_len=16, seq_rank=3, impl="reference").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 10, 16, dtype=DT)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False
    yf, yr = fast(x, mask=mask), ref(x, mask=mask)
    torch.testing.assert_close(yf, yr, rtol=1e-10, atol=1e-10)
    (yf.square().sum()).backward()
    (yr.square().sum()).backward()
    for (n, pf), pr in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-8, atol=1e-10, msg=n)


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
