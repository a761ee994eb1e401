"""benchmarks/gpu_throughput.py runs: its --toy mode on this CPU prints and writes its table (a
guard against the script breaking unnoticed before its one short run on a lent GPU; nothing
here is timed), a failing row is reported without losing the others, and the MFU's peak comes
from the device's data sheet, scaled down for a MIG slice."""

import os
import subprocess
import sys

import pytest
import torch

from benchmark_scripts import BENCHMARKS, load_benchmark

SCRIPT = BENCHMARKS / "gpu_throughput.py"


def table_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's header and rows (not its --- line)."""
    rows = [line.strip("|").split("|") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")]
    return [[cell.strip() for cell in row] for row in rows]


def test_toy_run_prints_and_writes_its_table(tmp_path):
    out = tmp_path / "result.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--toy", "--models", "bench-gpu,paper-0.39b", "--compile", "off",
         "--steps", "2", "--warmup", "1", "--log-every", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    header, *rows = table_rows(result.stdout)
    assert header[:3] == ["model", "compile", "trained params"] and header[-1] == "MFU"
    assert [row[:2] for row in rows] == [["bench-gpu", "off"], ["paper-0.39b", "off"]]
    for row in rows:
        cells = dict(zip(header, row))
        assert float(cells["steps/s"]) > 0 and int(cells["aten ops / step"]) > 0
        assert cells["counted / analytic"] == "1.0000"  # FlopCounterMode agrees with vilearn.dit.flops
        assert cells["syncs / step"] == cells["peak GiB"] == cells["MFU"] == "n/a"  # no GPU
    assert table_rows(out.read_text()) == [header, *rows]


def test_the_training_path_imports_no_mesh_preparation_package():
    """The GPU machine has torch, accelerate and transformers but not trimesh, libigl, embreex or
    fpsample: the script (and the trainer it imports) must load without them."""
    blocker = (
        "import importlib.abc, runpy, sys\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('trimesh', 'igl', 'embreex', 'fpsample', 'pybullet'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--help']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "--peak-tflops" in result.stdout


def test_a_failing_row_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    script = load_benchmark("gpu_throughput")
    measure = script.measure

    def fails_for_paper(name, *args):
        if name == "paper-0.39b":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB | more")
        return measure(name, *args)

    monkeypatch.setattr(script, "measure", fails_for_paper)
    out = tmp_path / "result.md"
    assert script.main(["--toy", "--compile", "off", "--steps", "1", "--warmup", "0", "--out", str(out)]) == 1
    header, *rows = table_rows(out.read_text())
    assert [row[:2] for row in rows] == [["bench-gpu", "off"], ["paper-0.39b", "off"]]
    assert float(rows[0][header.index("steps/s")]) > 0
    assert rows[1][2] == "failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB / more"
    assert "OutOfMemoryError" in capsys.readouterr().err  # the traceback, for the record


@pytest.mark.parametrize("name, sms, peak, slug", [
    ("NVIDIA H100 80GB HBM3", 132, 989.5, "h100"),  # SXM: 1979 TFLOP/s bf16 with sparsity
    ("NVIDIA H100 PCIe", 114, 756.5, "h100-pcie"),
    ("NVIDIA H200", 132, 989.5, "h200"),
    ("NVIDIA H200 NVL", 132, 835.5, "h200-nvl"),
    ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", 60, 989.5 * 60 / 132, "h100-mig"),
    ("NVIDIA A100-SXM4-80GB", 108, 312.0, "a100"),
])
def test_peak_and_file_name_come_from_the_device(monkeypatch, tmp_path, name, sms, peak, slug):
    script = load_benchmark("gpu_throughput")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *device: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Properties", (), {"multi_processor_count": sms}))
    assert script.peak_tflops(None)[0] == pytest.approx(peak)
    assert script.peak_tflops(500.0)[0] == 500.0
    assert script.output_path(None, toy=False) == script.RESULTS / f"gpu-throughput-{slug}.md"
    assert script.output_path(tmp_path, toy=True) == tmp_path / f"gpu-throughput-{slug}-toy.md"
    assert script.output_path(tmp_path / "x.md", toy=False) == tmp_path / "x.md"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *device: "Some Future GPU")
    assert script.peak_tflops(None)[0] is None  # unknown: no MFU rather than a wrong one
