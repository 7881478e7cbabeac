"""Subnet names: parsing, canonical formatting, errors, the Sparse Cocktail set."""
import pytest

from mmsparse.core import SparseNetwork, generate_masks
from mmsparse.core.subnets import (DENSE, SubnetNameError, SubnetSpec, cocktail_subnets,
                                   parse_subnet, parse_subnets)
from tiny_models import Residual, build


@pytest.mark.parametrize('name', ['dense', 'unstructured@0.50', 'channel@0.30', 'nm@2:4',
                                  'nm@1:4', 'block@0.50', 'unstructured@0.125'])
def test_names_round_trip(name):
    assert parse_subnet(name).name == name
    assert parse_subnet(parse_subnet(name)) == parse_subnet(name)


def test_nm_ratio_and_sort_order():
    assert parse_subnet('nm@2:4').ratio == 0.5
    names = ['nm@4:8', 'channel@0.30', 'dense', 'unstructured@0.80', 'unstructured@0.20']
    ordered = sorted(parse_subnets(names), key=lambda s: s.sort_key)
    assert [s.name for s in ordered] == ['dense', 'unstructured@0.20', 'unstructured@0.80',
                                         'channel@0.30', 'nm@4:8']


@pytest.mark.parametrize('bad,match', [
    ('unstructured@1.0', r'\[0, 1\)'), ('channel@1.5', r'\[0, 1\)'), ('nm@4:4', '0 < N < M'),
    ('nm@5:4', '0 < N < M'), ('nm@0:4', '0 < N < M'), ('sparse@0.5', 'cannot parse'),
    ('unstructured', 'cannot parse'), ('unstructured@-0.1', 'cannot parse'), ('', 'cannot')])
def test_bad_names_are_clear_errors(bad, match):
    with pytest.raises(SubnetNameError, match=match):
        parse_subnet(bad)


def test_ratios_are_canonical_at_six_decimals():
    assert parse_subnet('unstructured@0.5') == parse_subnet('unstructured@0.50')
    assert hash(parse_subnet('unstructured@0.5')) == hash(parse_subnet('unstructured@0.50'))
    long = parse_subnet('unstructured@0.1234567')
    assert long.ratio == 0.123457 and long.name == 'unstructured@0.123457'
    assert long == parse_subnet(long.name) == SubnetSpec('unstructured', 0.12345678)
    with pytest.raises(SubnetNameError, match='listed twice'):
        parse_subnets(['channel@0.5', 'channel@0.50'])


@pytest.mark.parametrize('bad,rounds_to', [('unstructured@0.9999999999', '1.0'),
                                           ('channel@0.9999996', '1.0'),
                                           ('block@0.0000001', '0.0')])
def test_ratios_that_round_to_the_ends_fail_at_parse_time(bad, rounds_to):
    with pytest.raises(SubnetNameError, match=f"'{bad}'.*rounds to {rounds_to}"):
        parse_subnet(bad)


def test_a_trained_name_round_trips_through_the_masks():
    """Masks made for a name with more than six decimals are found by that same name."""
    model, run, _ = build(Residual)
    network = SparseNetwork(model, run)
    generate_masks(network, ['unstructured@0.1234567', 'channel@0.3333333'])
    held = [s.name for s in network.subnets()]
    assert held == ['dense', 'unstructured@0.123457', 'channel@0.333333']
    for given in ('unstructured@0.1234567', 'channel@0.3333333', *held):
        assert network.resolve(given).name in held
        network.set_active(given)
        assert parse_subnet(network.active.name) == parse_subnet(given)


def test_duplicates_rejected():
    with pytest.raises(SubnetNameError, match='listed twice'):
        parse_subnets(['nm@2:4', 'dense', 'nm@2:4'])


def test_cocktail_set_is_24_subnets():
    specs = cocktail_subnets()
    assert len(specs) == 24 and specs[0] == DENSE
    assert [s.name for s in specs if s.pattern == 'unstructured'][:3] == [
        'unstructured@0.20', 'unstructured@0.36', 'unstructured@0.49']
    assert [s.name for s in specs if s.pattern == 'channel'][-1] == 'channel@0.65'
    assert [s.name for s in specs if s.pattern == 'nm'] == ['nm@1:2', 'nm@2:4', 'nm@4:8']
    assert SubnetSpec('unstructured', 0.89) in specs
