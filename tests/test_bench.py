"""The benchmark's model arithmetic: GMACs per variant as timm counts them (the speed itself is
measured by `python -m crossvit_keras.bench`, never in a test)."""

import pytest

import crossvit_keras
from crossvit_keras import bench, configs


def test_timm_figures_cover_every_variant():
    assert list(configs.TIMM_FIGURES) == crossvit_keras.list_models()


@pytest.mark.parametrize("name", list(configs.TIMM_FIGURES))
def test_gmacs_within_one_percent_of_timm(name):
    gmacs = bench.count_macs(configs.resolve_config(name)) / 1e9
    assert gmacs == pytest.approx(configs.TIMM_FIGURES[name][1], rel=0.01)
