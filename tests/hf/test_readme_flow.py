"""The README's Hugging Face walk-through runs as printed: train -> export-hf -> load with
AutoModelForCausalLM and generate -> Trainer fine-tuning -> lm_eval and hypermlp eval on a local
task. One shell script, the README's first bash block of the section, in a fresh folder."""

import os
import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def walkthrough() -> str:
    text = README.read_text()
    section = text.split("\n## Hugging Face\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]


def test_readme_hugging_face_walkthrough_runs_as_printed(tmp_path):
    script = tmp_path / "walkthrough.sh"
    script.write_text("set -euo pipefail\n" + walkthrough())
    env = os.environ.copy()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["HYPERMLP_CACHE"] = str(tmp_path / "cache")
    env["CI"] = "true"  # no progress bars
    # one torch thread, as the other tests: two threads on a busy 2-core machine spin against each other
    # (decoding measured 300x slower)
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    out = res.stdout
    assert "[y/N]" not in out + res.stderr  # nothing asks whether to trust the folder's code
    assert "hypermlp export-hf: runs/hf-demo/lm/checkpoints/" in out and "tokenizer: bpe" in out
    samples = [line for line in out.splitlines() if re.match(r"""^['"](def main\(|import os\\nimport)""", line)]
    assert len(samples) == 2, out
    assert "finetune: 20 steps" in out
    tables = [line for line in out.splitlines() if line.startswith("|code_mc") and "|acc" in line]
    assert len(tables) == 2, out  # lm_eval's table and hypermlp eval's
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(tmp_path / "runs/hf-demo/tuned"))
