"""The Triton kernels of the Hyper core against the readable reference: outputs and every gradient
(q, k, v, s1, s2 and each table), the decode step, the dispatch and the layers.

Without a GPU the kernels run under the Triton interpreter on CPU tensors, in float64 (the
interpreter's tl.dot on bfloat16 is not trustworthy; float64 makes the comparison tight). Triton
reads TRITON_INTERPRET when a function is decorated, its own library included, so the variable
must be set before triton's first import in the process; this module sets it only while it
imports triton and the kernels (``_import_triton_for_this_machine``) and during each of its tests
(``_interpreter``), so it reaches no other test. When something imported triton earlier (torch's
dynamo does, whenever triton is installed), the interpreter cannot be switched on any more: the
tests then run in a fresh process of their own (``test_in_a_fresh_process``).
Tests marked ``cuda`` repeat the comparisons in bfloat16 on a real GPU and skip elsewhere.
"""

import copy
import itertools
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

CUDA = torch.cuda.is_available()


def _import_triton_for_this_machine():
    """Import triton and the kernels; without a GPU, under the interpreter. Triton reads
    TRITON_INTERPRET when a function is decorated, its own library included, so the variable has
    to be set before triton's first import; it is restored right after, and only the kernels (and
    triton.language, which nothing else can run on a CPU-only machine) keep the setting."""
    old = os.environ.get("TRITON_INTERPRET")
    if not CUDA and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        from hypermlp.ops.hyper.triton import kernels
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
    return kernels


KERNELS = _import_triton_for_this_machine()
IN_THIS_PROCESS = CUDA or KERNELS.INTERPRETED  # else: test_in_a_fresh_process
FRESH_PROCESS_VAR = "HYPERMLP_TRITON_TESTS_IN_FRESH_PROCESS"


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    """The interpreter imports parts of triton lazily and checks the variable then too: set it
    for the duration of each test of this module (without a GPU), restored afterwards."""
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


import hypermlp.ops.hyper as hyper_pkg  # noqa: E402
from hypermlp.layers import HyperGLU, HyperMLP, ReLUAttention  # noqa: E402
from hypermlp.ops import hyper_core, hyper_core_chunked, hyper_core_decode, hyper_core_reference  # noqa: E402
from hypermlp.ops.hyper.triton import core, hyper_core_decode_triton, hyper_core_triton  # noqa: E402

from ._inputs import make_inputs  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
MIXES = [(True, True), (False, True), (True, False), (False, False)]


def on_device(inputs, dtype=torch.float64):
    return inputs.map(lambda x: x.to(DEVICE, dtype))._replace(
        key_valid=None if inputs.key_valid is None else inputs.key_valid.to(DEVICE))


def check_against_reference(inputs, rtol=1e-9, atol=1e-10, **kw):
    """Output, the gradient of every input and table, and the no-grad forward (no saved
    tensors) of ``hyper_core_triton`` against the reference on the same inputs."""
    block = dict(block_m=kw.pop("block_m", 16), block_n=kw.pop("block_n", 16))
    ref = inputs.call(hyper_core_reference, **kw)
    grad_out = torch.randn_like(ref)
    names, params = zip(*inputs.leaves())
    ref_grads = torch.autograd.grad(ref, params, grad_out)
    out = inputs.call(hyper_core_triton, **block, **kw)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, msg="output")
    grads = torch.autograd.grad(out, params, grad_out)
    for name, g, gr in zip(names, grads, ref_grads):
        assert g.dtype == gr.dtype, name
        torch.testing.assert_close(g, gr, rtol=rtol, atol=atol, msg=f"grad of {name}")
    with torch.no_grad():
        torch.testing.assert_close(inputs.call(hyper_core_triton, **block, **kw), ref, rtol=rtol, atol=atol,
                                   msg="no-grad output")


@pytest.mark.parametrize("mixes", MIXES)
@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("t,offset,padding", [(17, 0, False), (5, 3, True)])
def test_every_gradient_matches_reference(glu, mixes, t, offset, padding):
    # T = 17 is two query blocks of 16, the second with one row; keys in tiles of 16
    inputs = make_inputs(glu, t=t, offset=offset, padding=padding, mixes=mixes, dk=5, dv=6, r=3, seed=t + glu)
    check_against_reference(on_device(inputs), glu=glu, offset=offset)


@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("offset", [0, 6])
def test_single_query_with_gradients(glu, offset):
    inputs = make_inputs(glu, t=1, batch=3, offset=offset, padding=offset > 0, seed=offset)
    check_against_reference(on_device(inputs), glu=glu, offset=offset)


@pytest.mark.parametrize("glu,heads,batch", [(False, 1, 1), (True, 3, 2), (False, 4, 3)])
def test_head_counts_and_batches(glu, heads, batch):
    inputs = make_inputs(glu, heads=heads, batch=batch, t=9, offset=2, padding=True, seed=heads)
    check_against_reference(on_device(inputs), glu=glu, offset=2)


def test_several_query_blocks_and_wider_tiles():
    # the brief's shape: d_head 16, rank 4; three query blocks, 37 keys in tiles of 32 (not a multiple)
    inputs = make_inputs(True, t=37, dk=16, dv=16, r=4, max_len=40, padding=True, seed=5)
    check_against_reference(on_device(inputs), glu=True, offset=0, block_n=32)


def test_eps_inside_rho():
    # an all-zero query row: rho = sqrt(eps), and the gradient through it stays finite
    inputs = make_inputs(False, t=5, mixes=(False, True), seed=2)
    with torch.no_grad():
        inputs.q[:, :, 2] = 0
    check_against_reference(on_device(inputs), glu=False, offset=0, eps=1e-3)


@pytest.mark.parametrize("mixes", MIXES)
@pytest.mark.parametrize("glu", [False, True])
def test_float32_every_gradient_matches_reference(glu, mixes):
    # float32 takes the tl.dot branch of the kernels (float64 sums broadcasts): the path a GPU runs
    inputs = make_inputs(glu, t=17, offset=3, padding=True, mixes=mixes, dk=5, dv=6, r=3, seed=7 + glu)
    check_against_reference(on_device(inputs, torch.float32), rtol=1e-4, atol=1e-5, glu=glu, offset=3)


@pytest.mark.parametrize("glu", [False, True])
def test_float32_and_float16_inputs(glu):
    inputs = make_inputs(glu, t=7, offset=2, padding=True, dk=4, seed=11)
    check_against_reference(on_device(inputs, torch.float32), rtol=1e-4, atol=1e-5, glu=glu, offset=2)
    half = on_device(inputs, torch.float16)
    ref = half.map(lambda x: x.double()).call(hyper_core_reference, glu=glu, offset=2)
    out = half.call(hyper_core_triton, glu=glu, offset=2)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), ref, rtol=2e-3, atol=2e-3)
    grads = torch.autograd.grad(out.float().square().sum(), [t for _, t in half.leaves()])
    for (name, x), g in zip(half.leaves(), grads):
        assert g.dtype == torch.float16 and torch.isfinite(g).all(), name


@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_decode_equals_parallel_last_row(glu, padding):
    inputs = on_device(make_inputs(glu, t=9, padding=padding, seed=3 + padding))
    with torch.no_grad():
        full = inputs.call(hyper_core_triton, glu=glu, offset=0)
        last = inputs._replace(q=inputs.q[:, :, -1:], s1=inputs.s1[:, :, -1:], s2=inputs.s2[:, :, -1:])
        step = last.call(hyper_core_decode_triton, glu=glu, offset=8, block_n=16)
        torch.testing.assert_close(step, full[:, :, -1:], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(step, last.call(hyper_core_decode, glu=glu, offset=8), rtol=1e-10, atol=1e-12)


def test_dispatch(monkeypatch):
    calls = []
    for name in ("triton_op", "triton_decode_op", "chunked_op", "decode_op"):  # the cores' custom ops
        real = getattr(hyper_pkg, name)
        monkeypatch.setattr(hyper_pkg, name, lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))
    inputs = on_device(make_inputs(True, t=1, offset=4, seed=1))
    with torch.no_grad():
        inputs.call(hyper_core, glu=True, offset=4, impl="triton")  # a no-grad step at the end: decode
        inputs.call(hyper_core, glu=True, offset=4, impl="auto")
    out = inputs.call(hyper_core, glu=True, offset=4, impl="triton")  # gradients needed: the parallel kernel
    auto = "triton_decode_op" if CUDA else "decode_op"  # auto: triton only for CUDA tensors
    assert calls == ["triton_decode_op", auto, "triton_op"]
    torch.testing.assert_close(out, inputs.call(hyper_core_reference, glu=True, offset=4), rtol=1e-10, atol=1e-12)


def test_left_layout_falls_back_to_chunked_with_a_warning():
    inputs = on_device(make_inputs(True, t=6, offset=2, padding=True))
    kw = dict(glu=True, layout="left", offset=2)
    with pytest.warns(UserWarning, match="layout='left'"):
        out = inputs.call(hyper_core_triton, **kw)
    torch.testing.assert_close(out, inputs.call(hyper_core_chunked, **kw), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="layout='left'"):
        dispatched = inputs.call(hyper_core, impl="triton", **kw)
    torch.testing.assert_close(dispatched, out, rtol=0, atol=0)


def test_bad_input_is_refused_before_any_work():
    inputs = on_device(make_inputs(True, t=4))
    with pytest.raises(ValueError, match="block_m must be a power of two >= 16"):
        inputs.call(hyper_core_triton, glu=True, block_m=8)
    with pytest.raises(ValueError, match="score heads"):
        inputs.call(hyper_core_triton, glu=False)
    with pytest.raises(ValueError, match="offset"):
        inputs.call(hyper_core_triton, glu=True, offset=1)
    with pytest.raises(ValueError, match="tables"):
        short = inputs._replace(mix1=type(inputs.mix1)(*(t[:, :2] for t in inputs.mix1)))
        short.call(hyper_core_triton, glu=True)
    with pytest.raises(ValueError, match="one query"):
        inputs.call(hyper_core_decode_triton, glu=True)
    # CPU tensors without the interpreter: a clear error, not triton's "0 active drivers"
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        core._check_device(SimpleNamespace(INTERPRETED=False), torch.zeros(1))


@pytest.mark.parametrize("cls", [HyperGLU, HyperMLP, ReLUAttention])
def test_layers_equal_reference(cls):
    torch.manual_seed(0)
    fast = cls(d_model=16, n_heads=2, max_len=16, impl="triton", **({} if cls is ReLUAttention else dict(seq_rank=3)))
    fast = fast.to(DEVICE, torch.float64)
    with torch.no_grad():  # make the tables matter
        for p in fast.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref = copy.deepcopy(fast)
    ref.config.impl = "reference"
    x = torch.randn(2, 10, 16, dtype=torch.float64, device=DEVICE)
    mask = torch.ones(2, 10, dtype=torch.bool, device=DEVICE)
    mask[1, :3] = False
    yf, yr = fast(x, mask=mask), ref(x, mask=mask)
    torch.testing.assert_close(yf, yr, rtol=1e-10, atol=1e-10)
    yf.square().sum().backward()
    yr.square().sum().backward()
    for (name, pf), pr in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_kernels_compile_for_an_nvidia_gpu():
    # the interpreter never runs the GPU compiler: compile the forward, the decode step and the
    # backward for sm_90 (PTX, then ptxas), in a process without the interpreter
    code = ("from hypermlp.ops.hyper.triton import compile_check as c; "
            "print(c.check(90, [v for v in c.VARIANTS if v[1] == 'fp32' and v[2] and v[3] and v[4]]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(hyper_pkg.__file__).rsplit(os.sep, 3)[0],
                                                    env.get("PYTHONPATH")] if p)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Compiled(") == 3


# ----------------------------------------------------------------------------------------------
# on a real GPU: bfloat16 inputs (computed in float32 inside), against the reference on the same
# rounded inputs; tolerances of one bfloat16 rounding of the result


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("glu,mixes,padding", [(g, m, p) for g, m, p in itertools.product([False, True], MIXES, [False, True])])
def test_cuda_bfloat16_matches_reference(glu, mixes, padding):
    inputs = make_inputs(glu, batch=2, heads=2, t=77, offset=3, dk=16, dv=32, r=16, max_len=96, padding=padding,
                         mixes=mixes, seed=int(glu) + 2 * padding)
    bf = on_device(inputs, torch.bfloat16)
    ref = bf.map(lambda x: x.float()).call(hyper_core_reference, glu=glu, offset=3)
    out = bf.call(hyper_core, glu=glu, offset=3, impl="auto")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    grad_out = torch.randn_like(ref)
    params = [t for _, t in bf.leaves()]
    grads = torch.autograd.grad(out.float(), params, grad_out)
    ref_inputs = bf.map(lambda x: x.float())
    ref_out = ref_inputs.call(hyper_core_reference, glu=glu, offset=3)
    ref_grads = torch.autograd.grad(ref_out, [t for _, t in ref_inputs.leaves()], grad_out)
    for (name, _), g, gr in zip(bf.leaves(), grads, ref_grads):
        assert g.dtype == torch.bfloat16 and torch.isfinite(g).all(), name
        scale = gr.abs().max().item() + 1e-6
        torch.testing.assert_close(g.float() / scale, gr / scale, rtol=3e-2, atol=3e-2, msg=f"grad of {name}")
    with torch.no_grad():
        step = bf.call(hyper_core, glu=glu, offset=3, impl="auto")[:, :, -1:]
        last = bf._replace(q=bf.q[:, :, -1:], s1=None if bf.s1 is None else bf.s1[:, :, -1:],
                           s2=None if bf.s2 is None else bf.s2[:, :, -1:])
        dec = last.call(hyper_core_decode_triton, glu=glu, offset=bf.k.shape[2] - 1)
    torch.testing.assert_close(dec.float(), step.float(), rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------------------------------------
# triton was imported before this module (e.g. by torch._dynamo) on a machine without a GPU: the
# tests above cannot use the interpreter in this process, so one test runs them all in another


if not IN_THIS_PROCESS:
    for _test in [obj for name, obj in globals().items() if name.startswith("test_") and callable(obj)]:
        _test.__test__ = False  # pytest collects only test_in_a_fresh_process below

    def test_in_a_fresh_process():
        assert not os.environ.get(FRESH_PROCESS_VAR), "triton is imported before this module even in a fresh process"
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import hypermlp

        src = os.path.dirname(os.path.dirname(hypermlp.__file__))  # the folder holding the hypermlp under test
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env[FRESH_PROCESS_VAR] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
                              cwd=root, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
        assert " passed" in done.stdout and "test_in_a_fresh_process" not in done.stdout, done.stdout[-3000:]
