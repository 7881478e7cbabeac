"""Stored per-subnet BatchNorm statistics: each row is that subnet's recalibration, applying
them is reversible, they travel in the state dict, and exported copies drop them."""
import pytest
import torch

from mmsparse.core import SparseNetwork, SubnetNameError, fold_masks, generate_masks
from mmsparse.core.batchnorm.recalibration import recalibrated_bn, save_bn_stats
from mmsparse.core.batchnorm.stored_stats import (check_stored_bn_stats, register_stored_bn_stats,
                                                  store_subnet_bn_stats, stored_bn_count,
                                                  stored_bn_stats)
from tiny_models import LinearHead, Residual, build

SUBNETS = ['unstructured@0.50', 'channel@0.50', 'nm@2:4']


def _network(seed=0):
    model, run, x = build(Residual, seed)
    network = SparseNetwork(model, run)
    generate_masks(network, SUBNETS)
    model.eval()
    return network, [x, x * 2 + 1]


def _forward(batches):
    return lambda m: [m(b) for b in batches]


def test_each_row_is_that_subnets_recalibration_and_live_stats_stay():
    network, batches = _network()
    model = network.model
    network.set_active('nm@2:4')
    before = save_bn_stats(model)
    specs = store_subnet_bn_stats(network, _forward(batches))
    assert [s.name for s in specs] == ['dense', 'unstructured@0.50', 'channel@0.50', 'nm@2:4']
    assert network.active.name == 'nm@2:4'  # the active subnet is restored
    after = save_bn_stats(model)
    assert all(torch.equal(after[n][0], before[n][0]) for n in before)  # live stats untouched
    assert stored_bn_count(model) == 4 and model.bn1.subnet_running_mean.shape == (4, 16)
    for row, spec in enumerate(specs):
        network.set_active(spec)
        with recalibrated_bn(model, _forward(batches)):
            expected = (model.bn1.running_mean.clone(), model.bn2.running_var.clone())
        assert torch.equal(model.bn1.subnet_running_mean[row], expected[0]), spec.name
        assert torch.equal(model.bn2.subnet_running_var[row], expected[1]), spec.name
    # the subnets' statistics really differ (bn1 follows a masked conv)
    assert not torch.allclose(model.bn1.subnet_running_mean[0], model.bn1.subnet_running_mean[3])


def test_applying_stored_stats_matches_recalibration_and_restores():
    network, batches = _network()
    model = network.model
    store_subnet_bn_stats(network, _forward(batches))
    network.set_active('unstructured@0.50')
    with torch.no_grad():
        plain = model(batches[0])
        with recalibrated_bn(model, _forward(batches)):
            recalibrated = model(batches[0])
        with stored_bn_stats(network, 'unstructured@0.50'):
            stored = model(batches[0])
        assert torch.equal(model(batches[0]), plain)  # restored on exit
    assert torch.equal(stored, recalibrated) and not torch.allclose(stored, plain)


def test_stored_stats_round_trip_through_the_state_dict():
    network, batches = _network()
    store_subnet_bn_stats(network, _forward(batches))
    state = network.model.state_dict()
    assert state['bn1.subnet_running_mean'].shape == (4, 16)
    fresh, _ = _network(seed=1)
    register_stored_bn_stats(fresh.model, stored_bn_count(network.model))
    fresh.model.load_state_dict(state)
    assert check_stored_bn_stats(fresh.model, fresh) == 4
    for key in ('bn1.subnet_running_mean', 'bn2.subnet_running_var'):
        assert torch.equal(fresh.model.state_dict()[key], state[key])


def test_bad_use_is_an_error_naming_the_cause():
    network, batches = _network()
    with pytest.raises(ValueError, match='stores no per-subnet BatchNorm statistics'):
        with stored_bn_stats(network, 'dense'):
            pass
    register_stored_bn_stats(network.model, 2)
    with pytest.raises(ValueError, match='for 2 subnets, but the masks hold 4'):
        check_stored_bn_stats(network.model, network)
    store_subnet_bn_stats(network, _forward(batches))  # re-registers with the right count
    with pytest.raises(SubnetNameError, match="unknown subnet 'nm@1:2'"):
        with stored_bn_stats(network, 'nm@1:2'):
            pass


def test_an_exported_copy_keeps_the_live_stats_and_drops_the_stored_ones():
    network, batches = _network()
    store_subnet_bn_stats(network, _forward(batches))
    with stored_bn_stats(network, 'nm@2:4'):
        exported = fold_masks(network, 'nm@2:4')
    assert not [k for k in exported.state_dict() if 'subnet_' in k]
    assert torch.equal(exported.bn1.running_mean, network.model.bn1.subnet_running_mean[3])


def test_a_model_without_batchnorm_stores_nothing():
    model, run, x = build(LinearHead)
    network = SparseNetwork(model, run)
    generate_masks(network, ['unstructured@0.50'])
    assert [s.name for s in store_subnet_bn_stats(network, _forward([x]))] == [
        'dense', 'unstructured@0.50']
    assert stored_bn_count(model) == 0 and not check_stored_bn_stats(model, network)
