"""lm-evaluation-harness on our models, offline: a JSONL multiple-choice task written here and
loaded with --include-path, through ``hypermlp eval`` (in process). The plain ``lm_eval`` command,
in a fresh process that never imports hypermlp by hand, runs in test_readme_flow.py."""

import json

import pytest

from hypermlp.cli import main

from ..helpers import assert_one_line_error

pytest.importorskip("lm_eval")

ROWS = [
    {"question": "def f1(x):\n    return x *", "choices": ["1 + 1", "}}}}"], "answer": 0},
    {"question": "def f2(x):\n    return", "choices": ["x * 2 + 2", "@@ ]"], "answer": 0},
    {"question": "def f3(x):\n   ", "choices": ["return x * 3 + 3", "$$$$"], "answer": 0},
    {"question": "def", "choices": ["f4(x):", "%%%%"], "answer": 0},
]


def write_task(folder):
    """A four-question multiple-choice task ``hypermlp_tiny_mc`` in ``folder`` (JSONL + YAML)."""
    folder.mkdir(exist_ok=True)
    data = folder / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "tiny_mc.yaml").write_text(f"""task: hypermlp_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return folder


def test_hypermlp_eval_prints_the_metric(runs, tmp_path, capsys):
    tasks = write_task(tmp_path / "tasks")
    capsys.readouterr()
    out_json = tmp_path / "results.json"
    code = main(["eval", "--checkpoint", runs["bpe"][1], "--tasks", "hypermlp_tiny_mc", "--include-path", str(tasks),
                 "--device", "cpu", "--batch-size", "4", "--output", str(out_json)])
    assert code == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("|hypermlp_tiny_mc")]
    assert row and "|acc" in row[0], out
    acc = json.load(open(out_json))["results"]["hypermlp_tiny_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and f"{acc:.2f}".rstrip("0") in row[0].replace(" ", "")


def test_hypermlp_eval_takes_a_train_run(runs, tmp_path, capsys):
    tasks = write_task(tmp_path / "tasks")
    assert main(["eval", "--checkpoint", runs["byte"][0], "--tasks", "hypermlp_tiny_mc", "--include-path", str(tasks),
                 "--limit", "2", "--device", "cpu"]) == 0
    assert "|hypermlp_tiny_mc" in capsys.readouterr().out


def test_eval_errors_are_one_line(runs, tmp_path, capsys):
    tasks = write_task(tmp_path / "tasks")
    hf = runs["byte"][1]
    cases = [
        (["--checkpoint", hf, "--tasks", "no_such_task_xyz", "--include-path", str(tasks)], "unknown lm-eval task"),
        (["--checkpoint", hf, "--tasks", " , ", "--include-path", str(tasks)], "--tasks"),
        (["--checkpoint", hf, "--tasks", "hypermlp_tiny_mc", "--include-path", str(tmp_path / "nope")], "not a folder"),
        (["--checkpoint", str(tmp_path / "missing"), "--tasks", "hypermlp_tiny_mc"], "no such checkpoint"),
        (["--checkpoint", hf, "--tasks", "hypermlp_tiny_mc", "--limit", "0"], "--limit"),
        (["--checkpoint", hf, "--tasks", "hypermlp_tiny_mc", "--batch-size", "0"], "--batch-size"),
    ]
    for args, needle in cases:
        assert_one_line_error(capsys, main(["eval", *args]), needle)
