"""What the Hugging Face tests share: an offline, private Hugging Face home (set before
transformers is imported), one torch thread, and two tiny `hypermlp train`
runs (bytes and BPE) made once per session and exported."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

_HF_HOME = tempfile.mkdtemp(prefix="hypermlp-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, True)
# no network, and trust_remote_code's module copies land in a temp folder, not in ~/.cache
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_MODULES_CACHE"] = os.path.join(_HF_HOME, "modules")
for _flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ[_flag] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest.importorskip("transformers")

from .helpers import TEXT, train_args  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # tests/conftest.py
    yield


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Two tiny `hypermlp train` runs on the same text, bytes and BPE, and their exports:
    {"byte": (run, export), "bpe": (run, export)}, plus "corpus": the text file."""
    from hypermlp.cli import main

    root = tmp_path_factory.mktemp("hf-runs")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    out = {"corpus": str(corpus)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERMLP_CACHE", str(root / "cache"))
        mp.setenv("CI", "true")
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for kind in ("byte", "bpe"):
                run, hf = root / f"run-{kind}", root / f"hf-{kind}"
                assert main(train_args(str(corpus), run, kind)) == 0
                assert main(["export-hf", "--checkpoint", str(run), "--out", str(hf)]) == 0
                out[kind] = (str(run), str(hf))
        finally:
            torch.set_num_threads(old)
    return out
