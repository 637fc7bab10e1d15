"""``hypermlp train`` / ``generate`` / ``bench`` under user mistakes and damaged run folders:
resume with changed settings, bad values (one line, before any work), crash debris, corrupt
checkpoints, --force on folders hypermlp did not make, the cache folder of a resumed run."""

import math
import os

import pytest
import yaml

from hypermlp.checkpoint import latest_checkpoint
from hypermlp.cli import main
from hypermlp.train import read_metrics

from ..helpers import assert_one_line_error, snapshot
from .helpers import lm_args


def train_records(out):
    return [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["type"] == "train"]


# ----------------------------------------------------------------------------- defect 2: resume
def test_resume_refuses_settings_it_cannot_apply_and_leaves_the_run_alone(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "4", "--ckpt-every", "2")) == 0
    before = snapshot(out)
    capsys.readouterr()
    for extra, needle in ((["--batch-size", "4"], "batch_size"), (["--seq-len", "16"], "seq_len"),
                          (["--seed", "5"], "seed"), (["--tokenizer", "bpe"], "tokenizer"),
                          (["--d-model", "48"], "d_model")):
        code = main(lm_args(corpus, out, "--steps", "8", "--resume", *extra))
        assert_one_line_error(capsys, code, needle, "resume")
        assert snapshot(out) == before  # run.yaml, metrics, checkpoints: untouched


def test_resume_applies_a_longer_run_and_a_new_lr_and_records_what_ran(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "6", "--warmup-steps", "0", "--lr", "1e-3")) == 0
    assert main(lm_args(corpus, out, "--steps", "12", "--warmup-steps", "0", "--lr", "2e-3",
                        "--weight-decay", "0.05", "--resume")) == 0
    lrs = [r["lr"] for r in train_records(out)]
    assert [r["step"] for r in train_records(out)] == list(range(1, 13))
    # steps 7..12 follow the cosine of the new settings (from lr 2e-3 over 12 steps), not the
    # finished 6-step schedule (which would sit at min_lr)
    want = [1e-4 + 0.5 * (2e-3 - 1e-4) * (1 + math.cos(math.pi * s / 12)) for s in range(6, 12)]
    assert lrs[6:] == pytest.approx(want)
    run = yaml.safe_load(open(out / "run.yaml"))
    assert run["train"]["steps"] == 12 and run["train"]["lr"] == 2e-3
    (entry,) = run["history"]
    assert entry["resumed_at_step"] == 6
    assert entry["changed"] == {"steps": [6, 12], "lr": [1e-3, 2e-3], "weight_decay": [0.1, 0.05]}
    resumes = [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "resume"]
    assert [(r["step"], r["changed"]) for r in resumes] == [(6, entry["changed"])]
    import torch

    state = torch.load(os.path.join(latest_checkpoint(str(out)), "trainer_state.pt"), weights_only=True)
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.05, 0.0}  # applied, not reloaded
    # a resume that changes nothing adds nothing to the history
    assert main(lm_args(corpus, out, "--steps", "12", "--warmup-steps", "0", "--lr", "2e-3",
                        "--weight-decay", "0.05", "--resume")) == 0
    assert len(yaml.safe_load(open(out / "run.yaml"))["history"]) == 1
    # shorter than where the run already is: refused
    capsys.readouterr()
    assert_one_line_error(capsys, main(lm_args(corpus, out, "--steps", "3", "--resume")), "steps", "already at step 12")


# ----------------------------------------------------------------------------- defect 3: bad values
def _yaml(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return ["--config", str(p)]


BAD_TRAIN = [
    (["--data-arg", "eval_windows=0"], "eval_windows"),
    (["--seq-len", "0"], "seq_len"),
    (["--lr", "inf"], "lr"),
    (["--lr", "nan"], "lr"),
    (["--min-lr", "0.01"], "min_lr"),  # above lr 3e-3
    (["--grad-clip", "-1"], "grad_clip"),
    (["--weight-decay", "-0.1"], "weight_decay"),
    (["--warmup-steps", "-1"], "warmup_steps"),
    (["--n-heads", "0"], "n_heads"),
    (["--qk-rank", "7"], "qk_rank"),
    (["--seed", "-1"], "seed"),
    (["--data-arg", "val_fraction=2"], "val_fraction"),
    (["--data-arg", "max_bytes=lots"], "max_bytes"),
    (["--data-arg", "bpe_vocab_size=10", "--tokenizer", "bpe"], "bpe_vocab_size"),
    (["--data-arg", "x=[1"], "--data-arg"),
    (["--mixer-arg", "seq_rank"], "--mixer-arg"),
    (["--epochs", "0"], "epochs"),
]


@pytest.mark.parametrize("extra, needle", BAD_TRAIN, ids=[" ".join(e) for e, _ in BAD_TRAIN])
def test_bad_values_are_one_line_before_any_work(tmp_path, corpus, capsys, extra, needle):
    out = tmp_path / "out"
    assert_one_line_error(capsys, main(lm_args(corpus, out, *extra)), needle)
    assert not out.exists()


BAD_YAML = [
    ("task: lm\nmodel: [1, 2]\n", "model"),
    ("task: lm\ntrain: 5\n", "train"),
    ("task: lm\ndata: just text\n", "data"),
    ("task: lm\nmodel: {mixer_args: [1]}\n", "mixer_args"),
    ("task: lm\nout: [a]\n", "out"),
    ("task: lm\ncache_dir: 5\n", "cache_dir"),
    ("- task: lm\n", "mapping"),
    ("task: lm\ntrain: {steps: true}\n", "steps"),
    ("task: lm\ntrain: {progress: maybe}\n", "progress"),
    ("task: lm\nmodel: {rmsnorm_eps: -1}\n", "rmsnorm_eps"),
    ("task: lm\nmodel: {tie_embeddings: 3}\n", "tie_embeddings"),
    ("task: mad:in_context_recall\ndata: {num_train: lots}\n", "num_train"),
    ("task: mqar\ndata: {num_pairs: 1000}\n", "num_pairs"),
]


@pytest.mark.parametrize("text, needle", BAD_YAML, ids=[t.split("\n")[1] or t for t, _ in BAD_YAML])
def test_config_sections_of_the_wrong_shape_are_one_line(tmp_path, capsys, text, needle):
    out = tmp_path / "out"
    argv = ["train", *_yaml(tmp_path, text), "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    if "steps" not in text:
        argv += ["--steps", "2"]
    assert_one_line_error(capsys, main(argv), needle)  # a flag given as well does not hide a bad YAML value
    assert not out.exists()


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("task: lm\n# caf\xe9\n".encode("latin-1"))
    assert_one_line_error(capsys, main(["train", "--config", str(p), "--out", str(tmp_path / "o")]), "UTF-8")


def test_a_bad_value_with_force_leaves_the_existing_run_alone(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "2")) == 0
    before = snapshot(out)
    capsys.readouterr()
    for extra in (["--n-heads", "0"], ["--max-len", "8"], ["--data-arg", "eval_windows=0"]):
        assert_one_line_error(capsys, main(lm_args(corpus, out, "--force", *extra)))
        assert snapshot(out) == before


@pytest.mark.parametrize("extra, needle", [
    (["--top-k", "0"], "top-k"), (["--top-k", "-2"], "top-k"), (["--temperature", "-1"], "temperature"),
    (["--temperature", "nan"], "temperature"), (["--max-new-tokens", "-1"], "max-new-tokens"),
    (["--seed", "-1"], "seed"),
])
def test_generate_refuses_bad_sampling_values(tmp_path, corpus, capsys, extra, needle):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "2")) == 0
    capsys.readouterr()
    code = main(["generate", "--checkpoint", str(out), "--prompt", "def", "--max-new-tokens", "3", *extra])
    assert_one_line_error(capsys, code, needle)


def test_resume_from_an_empty_trainer_state_is_one_line(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "2")) == 0
    ckpt = latest_checkpoint(str(out))
    open(os.path.join(ckpt, "trainer_state.pt"), "w").close()  # 0 bytes
    capsys.readouterr()
    assert_one_line_error(capsys, main(lm_args(corpus, out, "--steps", "4", "--resume")), "trainer_state.pt", "checksum")
    os.remove(os.path.join(ckpt, "checksums.json"))  # as written before checksums: torch.load's own (empty) message
    assert_one_line_error(capsys, main(lm_args(corpus, out, "--steps", "4", "--resume")), "cannot read",
                          "trainer_state.pt")


# ----------------------------------------------------------------------------- defect 4: debris
def test_debris_of_a_killed_checkpoint_write_is_removed_when_the_next_run_starts(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "2")) == 0
    root = out / "checkpoints"
    for junk in (".tmp-abc123", ".old-def456"):
        (root / junk).mkdir()
        (root / junk / "model.safetensors").write_bytes(b"half")
    (root / ".latest.1234abcd.tmp").write_text("step-")
    import json

    from hypermlp.models import ModelConfig
    from hypermlp.tasks import build_task
    from hypermlp.train import TrainConfig, Trainer

    task, _ = build_task("lm", {"path": corpus, "seq_len": 32})
    model_cfg = ModelConfig.from_dict(json.load(open(root / "step-00000002" / "config.json")))
    train_cfg = TrainConfig.from_dict(yaml.safe_load(open(out / "run.yaml"))["train"])
    Trainer(model_cfg, task, train_cfg, out_dir=str(out), resume=True)
    assert sorted(os.listdir(root)) == ["latest", "step-00000002"]  # at the start, before any save


# ----------------------------------------------------------------------------- defect 6: corruption
def _flip_last_byte(path):
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0x55
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.pt"])
def test_a_corrupt_checkpoint_file_is_named_on_resume_and_generate(tmp_path, corpus, capsys, name):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "2")) == 0
    ckpt = latest_checkpoint(str(out))
    _flip_last_byte(os.path.join(ckpt, name))  # tensor data: the file still parses
    capsys.readouterr()
    assert_one_line_error(capsys, main(lm_args(corpus, out, "--steps", "4", "--resume")), name, "checksum")
    if name == "model.safetensors":
        code = main(["generate", "--checkpoint", str(out), "--prompt", "def", "--max-new-tokens", "2"])
        assert_one_line_error(capsys, code, name, "checksum")


def test_weights_that_are_not_finite_do_not_load(tmp_path, corpus, capsys):
    import torch

    from hypermlp.models import LanguageModel

    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "2")) == 0
    ckpt = latest_checkpoint(str(out))
    lm = LanguageModel.load(ckpt)
    with torch.no_grad():
        lm.blocks[0].mlp.down.weight[0, 0] = float("nan")
    lm.save(ckpt)  # written by the library: the checksums agree with the NaN
    capsys.readouterr()
    code = main(["generate", "--checkpoint", ckpt, "--prompt", "def", "--max-new-tokens", "2"])
    assert_one_line_error(capsys, code, "blocks.0.mlp.down.weight", "not finite")


# ----------------------------------------------------------------------------- defect 7: --force
def test_force_refuses_a_folder_hypermlp_did_not_make(tmp_path, corpus, capsys):
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "precious.bin").write_bytes(b"x")
    (out / "metrics.jsonl").write_text("my notes\n")
    before = snapshot(out)
    assert_one_line_error(capsys, main(lm_args(corpus, out, "--force")), "did not create")
    assert snapshot(out) == before


def test_force_removes_only_the_runs_own_files(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "2")) == 0
    (out / "notes.txt").write_text("keep me")
    (out / "checkpoints" / "mine.txt").write_text("and me")
    assert main(lm_args(corpus, out, "--steps", "3", "--force")) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "checkpoints" / "mine.txt").read_text() == "and me"
    assert [r["step"] for r in train_records(out)] == [1, 2, 3]
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "mine.txt", "step-00000003"]


# ----------------------------------------------------------------------------- defect 9
def test_resume_from_the_run_folder_keeps_its_cache_dir(tmp_path, corpus, monkeypatch):
    out, cache = tmp_path / "run", tmp_path / "my-cache"
    assert main(lm_args(corpus, out, "--steps", "2", "--tokenizer", "bpe", "--data-arg", "bpe_vocab_size=300",
                        "--cache-dir", str(cache))) == 0
    files = sorted(os.listdir(cache))
    monkeypatch.setenv("HYPERMLP_CACHE", str(tmp_path / "elsewhere"))
    assert main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0
    assert not (tmp_path / "elsewhere").exists() and sorted(os.listdir(cache)) == files
    assert yaml.safe_load(open(out / "run.yaml"))["cache_dir"] == str(cache)


def test_bench_usage_errors_are_one_line(capsys):
    for argv, needle in ((["bench", "--bogus"], "--bogus"), (["bench", "--batch", "0"], "--batch")):
        code = main(argv)
        err = capsys.readouterr().err
        lines = [l for l in err.splitlines() if l.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("hypermlp bench: error: "), err
        assert needle in lines[0]
