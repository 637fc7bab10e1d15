"""What the CLI tests share: a small corpus, the arguments of a tiny LM run, and checks that a
folder was left alone and that an error is one line."""

import hashlib
import os

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(400))


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
