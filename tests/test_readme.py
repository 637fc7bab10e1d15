"""The README's Python examples run as printed and print what their comments say."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run_and_print_what_they_claim():
    blocks = python_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(README), "exec"), {})
        printed = out.getvalue().splitlines()
        claimed = [m.group(1).strip() for m in re.finditer(r"print\(.*\)[ \t]+#[ \t]*(.*)", block)]
        assert printed == claimed, f"README block printed {printed}, its comments say {claimed}"
