"""The benchmark scripts of benchmarks/: the model arithmetic (GMACs per variant as timm counts them),
their command lines, and the GPU benchmark on a CPU-only host (the speed itself is measured by
`python benchmarks/speed.py`, never in a test)."""

import importlib
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO, run_python

import crossvit_keras
from crossvit_keras import configs
from crossvit_keras.ablations import count_macs

BENCHMARKS = os.path.join(REPO, "benchmarks")
SCRIPTS = (
    "speed",
    "deploy",
    "gpu",
    "fusion_scaling",
    "macs",
    "input_pipeline",
    "shards",
    "fit_step",
    "grad_accum",
    "lora",
    "quantize",
    "remat",
)


def benchmark(name):
    """benchmarks/NAME.py imported as the module NAME, as `python benchmarks/NAME.py` sees it: with
    its folder on sys.path (for its `import common`) while it is imported."""
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCHMARKS)


def test_timm_figures_cover_every_variant():
    assert list(configs.TIMM_FIGURES) == crossvit_keras.list_models()


@pytest.mark.parametrize("name", list(configs.TIMM_FIGURES))
def test_gmacs_within_one_percent_of_timm(name):
    gmacs = count_macs(configs.resolve_config(name)) / 1e9
    assert gmacs == pytest.approx(configs.TIMM_FIGURES[name][1], rel=0.01)


def test_every_script_runs_from_the_repository_root_with_help():
    env = {**os.environ, "PYTHONPATH": REPO}
    for name in SCRIPTS:
        done = subprocess.run(
            [sys.executable, os.path.join("benchmarks", f"{name}.py"), "--help"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (name, done.stderr[-2000:])
        assert done.stdout.startswith(f"usage: python benchmarks/{name}.py"), (name, done.stdout)


def test_the_timm_side_of_the_scripts_imports_no_tensorflow():
    """The timm workers run speed.py, deploy.py and gpu.py in an interpreter without TensorFlow."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import common, deploy, gpu, speed; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'crossvit_keras') if m in sys.modules))"
    )
    assert run_python(code).strip() == "[]"


def test_gpu_benchmark_on_a_machine_without_gpu_measures_the_cpu(capsys):
    """`python benchmarks/gpu.py` on a CPU-only host says so and measures the CPU (one case, one round)."""
    argv = ["--model", "crossvit_tiny_240", "--gpu-tasks", "predict", "--gpu-dtypes", "float32"]
    argv += ["--gpu-xla", "off", "--rounds", "1", "--steps", "1", "--warmup", "1", "--max-foreign-load", "64"]
    assert benchmark("gpu").main(argv) == 0
    out, err = capsys.readouterr()
    assert "no GPU found: measuring the CPU" in err
    assert "no GPU: the CPU" in out
    assert re.search(r"^\| CPU \| predict \| synthetic \| float32 \| off \(off\) \| 4 \| [0-9.]+ \|", out, re.M), out


def test_gpu_counts_default_to_powers_of_two_and_all():
    gpu = benchmark("gpu")

    assert gpu.gpu_counts(None, 1) == [1]
    assert gpu.gpu_counts(None, 8) == [1, 2, 4, 8]
    assert gpu.gpu_counts(None, 6) == [1, 2, 4, 6]
    assert gpu.gpu_counts("1,8", 8) == [1, 8]
    with pytest.raises(ValueError, match="this machine has 2 GPU"):
        gpu.gpu_counts("4", 2)


def test_macs_table_rows_check_the_paper_tolerance():
    """benchmarks/macs.py's rows of Tables 6 and 7 (counts made up: no model is built)."""
    macs = benchmark("macs")
    counts = {"params": 26_856_272, "paper_params": 26_703_632, "gmacs": 5.62, "traced_gmacs": 5.62}
    row, ok = macs._row("cross_attention", counts, (26.7, 5.6))
    assert ok and row == "| cross_attention | 26,856,272 | 26.70 | 26.7 | 5.62 | 5.62 | 5.6 | yes |"
    assert macs._row("x", {**counts, "gmacs": 6.0}, (26.7, 5.6)) == (
        "| x | 26,856,272 | 26.70 | 26.7 | 6.00 | 5.62 | 5.6 | NO |",
        False,
    )
    assert macs._row("x", {**counts, "gmacs": 6.0}, (26.7, 5.6), exempt=True)[1]
    assert macs._row("no_cls", counts, (None, None)) == (
        "| no_cls | 26,856,272 | 26.70 | - | 5.62 | 5.62 | - | - |",
        True,
    )
