"""Checks the CLI tests of several folders share: that a folder was left alone, and that an
error is one line."""

import hashlib
import os


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
