"""The machine record shared by bench and compare."""

from hypermlp.machine import machine_info


def test_machine_info_fields():
    info = machine_info("cpu", "fp32")
    for key in ("platform", "processor", "cpu_count", "python", "torch", "numpy", "hypermlp", "torch_threads"):
        assert info[key] not in (None, ""), key
    assert info["device"] == "cpu" and info["dtype"] == "fp32" and "gpu" not in info
    assert "dtype" not in machine_info("cpu")
    assert machine_info()["device"] in ("cpu", "cuda")
