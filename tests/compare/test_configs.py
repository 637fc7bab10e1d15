"""The shipped compare configs load; the design-study presets hold the paper's 13 variants on the six
MAD tasks (fuzzy recall included) and the language model, with at least three seeds."""

import pathlib

import pytest
import yaml

from hypermlp.compare import load_suite
from hypermlp.compare.settings import data_settings
from hypermlp.data.mad import MAD_TASKS
from hypermlp.variants import EXAMPLES

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def suite(name):
    return load_suite(yaml.safe_load((CONFIGS / name).read_text()))


# `hypermlp train` configs (lm_example, paper_340m, paper_1p3b) name a task; compare suites do not
TRAIN_CONFIGS = {p.name for p in CONFIGS.glob("*.yaml") if "task" in (yaml.safe_load(p.read_text()) or {})}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in TRAIN_CONFIGS))
def test_every_compare_config_loads(name):
    assert suite(name).tasks


@pytest.mark.parametrize("name", ["paper_design_study.yaml", "paper_design_study_gpu.yaml"])
def test_the_design_study_presets(name):
    s = suite(name)
    assert s.mixers == EXAMPLES
    assert {t.task for t in s.tasks} == {f"mad:{t}" for t in MAD_TASKS} | {"lm"}
    assert len(s.seeds) >= 3 and s.budget["rule"] == "paper" and s.budget["reference"] == "S-pc"


def test_the_cpu_preset_is_sized_for_two_cores():
    s = suite("paper_design_study.yaml")
    assert s.workers == 2 and s.threads_per_worker == 1 and s.device == "auto"
    runs = sum(len(data_settings(t)) * len(t.grid.lr) * len(t.grid.weight_decay) for t in s.tasks)
    assert runs == 7  # one setting, one grid point per task: 13 x 7 x 3 = 273 runs
    assert all(t.preset == "quick" for t in s.tasks)


def test_the_gpu_preset_runs_the_mad_protocol():
    s = suite("paper_design_study_gpu.yaml")
    assert s.device == "cuda"
    for t in s.tasks:
        if t.kind == "mad":
            assert t.preset == "full" and len(t.grid.lr) * len(t.grid.weight_decay) == 6 and t.train["epochs"] == 200
