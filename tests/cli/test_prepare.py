"""``hypermlp prepare`` end to end: prepare, reuse, train from the folder and resume exactly; every
bad input is one line, exit code 2, and nothing is written."""

import json

import pytest

from hypermlp.cli import main
from hypermlp.train import read_metrics

from ..helpers import assert_one_line_error, snapshot
from .helpers import lm_args


def prepare_args(data, out, *extra):
    return ["prepare", "--data", str(data), "--out", str(out), *extra]


def losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]


def test_prepare_reuse_then_train_and_resume_from_the_folder_exactly(tmp_path, corpus, capsys):
    prep = tmp_path / "prep"
    assert main(prepare_args(corpus, prep, "--tokenizer", "bpe", "--bpe-vocab-size", "300")) == 0
    out = capsys.readouterr().out
    assert "written | bpe vocab" in out and f"--data {prep}" in out
    before = snapshot(prep)
    assert main(prepare_args(corpus, prep, "--tokenizer", "bpe", "--bpe-vocab-size", "300")) == 0
    assert "reused (same input and settings)" in capsys.readouterr().out and snapshot(prep) == before

    # straight through, and stopped at step 3 then resumed: the same losses
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(lm_args(str(prep), straight, "--steps", "6", "--ckpt-every", "3")) == 0
    assert main(lm_args(str(prep), resumed, "--steps", "3", "--ckpt-every", "3")) == 0
    assert main(["train", "--out", str(resumed), "--resume", "--steps", "6"]) == 0
    assert [s for s, _ in losses(straight)] == list(range(1, 7)) and losses(resumed) == losses(straight)
    # the checkpoint carries the prepared tokenizer
    ckpt = sorted((straight / "checkpoints").iterdir())[-1]
    assert (ckpt / "tokenizer.json").read_bytes() == (prep / "tokenizer.json").read_bytes()


def test_progress_bars_show_bytes_and_tokens_when_asked(tmp_path, corpus, capsys):
    assert main(prepare_args(corpus, tmp_path / "prep", "--progress")) == 0
    err = capsys.readouterr().err
    assert "scan" in err and "tokenize" in err and "tokens=" in err and "B/s" in err


def write_parquet(path, **columns):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


BAD_INPUTS = {
    "empty Parquet": (lambda d: write_parquet(d / "x.parquet", text=pa_strings([])), "x.parquet", [],
                      "no documents (empty Parquet file)"),
    "no text column": (lambda d: write_parquet(d / "x.parquet", body=pa_strings(["a b c"])), "x.parquet", [],
                       "no 'text' column (columns: body)"),
    "not Parquet": (lambda d: (d / "x.parquet").write_text("hello"), "x.parquet", [], "not a readable Parquet file"),
    "JSONL without text": (lambda d: (d / "x.jsonl").write_text('{"text": "ok"}\n{"body": "no"}\n'), "x.jsonl", [],
                           "x.jsonl line 2: no 'text' field"),
    "JSONL not JSON": (lambda d: (d / "x.jsonl").write_text('{"text": "ok"}\n{text\n'), "x.jsonl", [],
                       "x.jsonl line 2: not JSON"),
    "empty file": (lambda d: (d / "x.txt").write_text(""), "x.txt", [], "x.txt: file is empty"),
    "binary file": (lambda d: (d / "x.txt").write_bytes(b"\x00\xff"), "x.txt", [], "not UTF-8 text"),
    "missing": (lambda d: None, "nothing.txt", [], "no such file or directory"),
    "vocabulary too big for uint16": (lambda d: (d / "x.txt").write_text("a b\n" * 50), "x.txt",
                                      ["--tokenizer", "bpe", "--bpe-vocab-size", "70000", "--dtype", "uint16"],
                                      "a vocabulary of 70000 ids is too big for uint16"),
    "val fraction": (lambda d: (d / "x.txt").write_text("a b\n" * 50), "x.txt", ["--val-fraction", "1.5"],
                     "val_fraction must be in (0, 1)"),
}


def pa_strings(values):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys, case):
    make, name, extra, message = BAD_INPUTS[case]
    data = tmp_path / "data"
    data.mkdir()
    make(data)
    before = snapshot(tmp_path)
    assert_one_line_error(capsys, main(prepare_args(data / name, tmp_path / "prep", *extra)), message)
    assert snapshot(tmp_path) == before and not (tmp_path / "prep").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no half-made folder left either


def test_an_out_folder_holding_anything_else_is_left_alone(tmp_path, corpus, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    before = snapshot(mine)
    assert_one_line_error(capsys, main(prepare_args(corpus, mine)), "not a prepared corpus (no manifest.json)")
    assert snapshot(mine) == before
    prep = tmp_path / "prep"
    assert main(prepare_args(corpus, prep)) == 0
    before = snapshot(prep)
    capsys.readouterr()
    assert_one_line_error(capsys, main(prepare_args(corpus, prep, "--tokenizer", "bpe")),
                          "other settings", "tokenizer 'byte' -> 'bpe'")
    assert snapshot(prep) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(prepare_args(corpus, empty)) == 0 and (empty / "manifest.json").is_file()  # an empty folder is fine


def test_training_from_a_damaged_or_mismatched_folder_is_one_line(tmp_path, corpus, capsys):
    prep = tmp_path / "prep"
    assert main(prepare_args(corpus, prep)) == 0
    capsys.readouterr()
    assert_one_line_error(capsys, main(lm_args(str(prep), tmp_path / "run", "--tokenizer", "bpe")),
                          "lm data tokenizer='bpe'", "fixed by `hypermlp prepare`")
    (prep / "val.bin").write_bytes((prep / "val.bin").read_bytes()[:-1])
    assert_one_line_error(capsys, main(lm_args(str(prep), tmp_path / "run")), "val.bin", "truncated or damaged shard")
    manifest = json.loads((prep / "manifest.json").read_text())
    manifest["splits"]["val"]["tokens"] += 1
    (prep / "manifest.json").write_text(json.dumps(manifest))
    (prep / "val.bin").write_bytes((prep / "val.bin").read_bytes()[:-1])
    assert_one_line_error(capsys, main(lm_args(str(prep), tmp_path / "run")), "but the manifest says")
    assert not (tmp_path / "run").exists()
