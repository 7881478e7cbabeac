"""ERK allocation: exact budget, caps at dense, RigL's formula, clear errors."""
import math

import pytest
import torch

from mmsparse.core import erk_densities

SHAPES = {
    'stem': torch.Size([16, 3, 3, 3]),
    'small': torch.Size([16, 16, 3, 3]),
    'big': torch.Size([256, 256, 3, 3]),
    'fc': torch.Size([10, 256]),
}


def _kept(densities, shapes):
    return sum(densities[n] * math.prod(s) for n, s in shapes.items())


@pytest.mark.parametrize('density', [0.05, 0.2, 0.5, 0.9])
def test_total_is_the_budget_and_densities_are_valid(density):
    densities = erk_densities(SHAPES, density)
    total = sum(math.prod(s) for s in SHAPES.values())
    assert _kept(densities, SHAPES) == pytest.approx(density * total, rel=1e-9)
    assert all(0.0 < d <= 1.0 for d in densities.values())


def test_layers_over_one_are_capped_and_the_rest_follow_the_erk_ratio():
    # At 10% the three small layers would need density > 1: dense, the big one takes the rest.
    assert [n for n, d in erk_densities(SHAPES, 0.1).items() if d == 1.0] == [
        'stem', 'small', 'fc']
    # At 2% only the classifier is capped; the others keep RigL's ratio (sum of dims /
    # product of dims) between them.
    densities = erk_densities(SHAPES, 0.02)
    assert densities['fc'] == 1.0
    ratio = {n: sum(SHAPES[n]) / math.prod(SHAPES[n]) for n in ('stem', 'small', 'big')}
    for name in ('stem', 'small'):
        assert densities[name] < 1.0
        assert densities[name] / densities['big'] == pytest.approx(ratio[name] / ratio['big'])


def test_two_layers_by_hand():
    # eps * (raw_a * n_a + raw_b * n_b) = 0.5 * (n_a + n_b); nothing capped.
    shapes = {'a': torch.Size([100, 100]), 'b': torch.Size([50, 200])}
    raw = {'a': 200 / 10000, 'b': 250 / 10000}
    eps = 0.5 * 20000 / (raw['a'] * 10000 + raw['b'] * 10000)
    densities = erk_densities(shapes, 0.5)
    assert densities['a'] == pytest.approx(eps * raw['a'])
    assert densities['b'] == pytest.approx(eps * raw['b'])


def test_power_scale_zero_is_uniform_and_density_one_is_dense():
    assert all(d == pytest.approx(0.3) for d in erk_densities(SHAPES, 0.3, 0.0).values())
    assert erk_densities(SHAPES, 1.0) == {n: 1.0 for n in SHAPES}


@pytest.mark.parametrize('density', [0.0, -0.1, 1.5])
def test_density_outside_the_open_closed_unit_interval_is_an_error(density):
    with pytest.raises(ValueError, match='density must be in'):
        erk_densities(SHAPES, density)


def test_empty_inputs_are_errors_naming_the_layer():
    with pytest.raises(ValueError, match='at least one'):
        erk_densities({}, 0.5)
    with pytest.raises(ValueError, match="'empty'"):
        erk_densities({'empty': torch.Size([0, 3])}, 0.5)
