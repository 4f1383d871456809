"""The benchmark's model arithmetic: GMACs per variant as timm counts them (the speed itself is
measured by `python -m crossvit_keras.bench`, never in a test)."""

import re

import pytest

import crossvit_keras
from crossvit_keras import bench, configs


def test_timm_figures_cover_every_variant():
    assert list(configs.TIMM_FIGURES) == crossvit_keras.list_models()


@pytest.mark.parametrize("name", list(configs.TIMM_FIGURES))
def test_gmacs_within_one_percent_of_timm(name):
    gmacs = bench.count_macs(configs.resolve_config(name)) / 1e9
    assert gmacs == pytest.approx(configs.TIMM_FIGURES[name][1], rel=0.01)


def test_gpu_benchmark_on_a_machine_without_gpu_measures_the_cpu(capsys):
    """`bench --gpu` on a CPU-only host says so and measures the CPU (one case, one round)."""
    argv = ["--gpu", "--model", "crossvit_tiny_240", "--gpu-tasks", "predict", "--gpu-dtypes", "float32"]
    argv += ["--gpu-xla", "off", "--rounds", "1", "--steps", "1", "--warmup", "1", "--max-foreign-load", "64"]
    assert bench.main(argv) == 0
    out, err = capsys.readouterr()
    assert "no GPU found: measuring the CPU" in err
    assert "no GPU: the CPU" in out
    assert re.search(r"^\| CPU \| predict \| float32 \| off \(off\) \| 4 \| [0-9.]+ \|", out, re.M), out


def test_gpu_counts_default_to_powers_of_two_and_all():
    from crossvit_keras import bench_gpu

    assert bench_gpu.gpu_counts(None, 1) == [1]
    assert bench_gpu.gpu_counts(None, 8) == [1, 2, 4, 8]
    assert bench_gpu.gpu_counts(None, 6) == [1, 2, 4, 6]
    assert bench_gpu.gpu_counts("1,8", 8) == [1, 8]
    with pytest.raises(ValueError, match="this machine has 2 GPU"):
        bench_gpu.gpu_counts("4", 2)
