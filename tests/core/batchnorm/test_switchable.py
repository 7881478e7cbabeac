"""Switchable BatchNorm: separate statistics per subnet, exact switching, checkpoints."""
import pytest
import torch
from torch import nn

from mmsparse.core import SubnetNameError
from mmsparse.core.batchnorm.switchable import OptimizerStateSlots, SwitchableBatchNorm

# Three subnets in the order SparseNetwork.subnets() lists them (the slot order).
A, B, C = 'unstructured@0.50', 'unstructured@0.80', 'nm@2:4'


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _values(bn):
    return [t.detach().clone() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                         bn.num_batches_tracked)]


def test_alternating_training_keeps_separate_statistics_and_parameters():
    model = _model()
    switch = SwitchableBatchNorm(model, [A, B])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(6):
        name = (A, B)[step % 2]
        switch.activate(name)
        shift = 5.0 if name == A else -5.0
        loss = model(torch.randn(8, 3, 4, 4) + shift).mean() * (1 if name == A else -1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    switch.sync()
    bn = model[1]
    assert bn.switchable_num_batches_tracked.tolist() == [3, 3]
    mean_a, mean_b = bn.switchable_running_mean
    assert not torch.allclose(mean_a, mean_b)
    assert not torch.equal(bn.switchable_weight[0], bn.switchable_weight[1])
    # the live values are b's (trained last) and its slot holds them after sync
    assert int(bn.switchable_index) == 1 and torch.equal(bn.running_mean, mean_b)


def test_switching_restores_values_bitwise():
    model = _model()
    switch = SwitchableBatchNorm(model, [A, B])
    bn = model[1]
    model(torch.randn(4, 3, 2, 2) * 3 + 1)  # train-mode forward: a's statistics move
    with torch.no_grad():
        bn.weight.add_(0.25)
    a_values = _values(bn)
    assert switch.activate(B) == (0, 1)
    model(torch.randn(4, 3, 2, 2))
    b_values = _values(bn)
    switch.activate(A)
    assert all(torch.equal(x, y) for x, y in zip(_values(bn), a_values))
    switch.activate(B)
    assert all(torch.equal(x, y) for x, y in zip(_values(bn), b_values))
    params = [p.data_ptr() for p in model.parameters()]
    switch.activate('dense')  # not listed: slot 0
    assert switch.live_slot == 0
    assert [p.data_ptr() for p in model.parameters()] == params  # same tensors, in place


def test_state_dict_round_trip_and_stock_checkpoint():
    model = _model()
    switch = SwitchableBatchNorm(model, [A, B, C])
    for shift, name in enumerate((A, B, C)):
        switch.activate(name)
        model(torch.randn(4, 3, 2, 2) + 97 + shift)
    switch.sync()
    state = model.state_dict()
    assert state['1.switchable_running_mean'].shape == (3, 4)

    other = _model()
    SwitchableBatchNorm(other, [A, B, C])
    other.load_state_dict(state)  # strict: every key matches
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())

    stock = _model()
    stock(torch.randn(4, 3, 2, 2) + 7)  # a "pretrained" BN
    sparse = _model()
    switch = SwitchableBatchNorm(sparse, [A, B])
    result = sparse.load_state_dict(stock.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name in (A, B):
        switch.activate(name)
        assert torch.equal(sparse[1].running_mean, stock[1].running_mean), name
        assert torch.equal(sparse[1].weight, stock[1].weight), name

    two = _model()
    SwitchableBatchNorm(two, [A, B])
    with pytest.raises(ValueError, match='3 switchable BatchNorm slots, the model 2'):
        two.load_state_dict(state)


def test_optimizer_state_follows_the_slot():
    model = _model()
    switch = SwitchableBatchNorm(model, [A, B])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    slots = OptimizerStateSlots(opt, switch.parameters())
    bn_weight = model[1].weight

    def step(name, sign):
        slots.swap(*switch.activate(name))
        opt.zero_grad()
        (sign * model(torch.ones(2, 3, 2, 2)).sum()).backward()
        opt.step()
        return opt.state[bn_weight]['momentum_buffer'].clone()

    momentum_a = step(A, 1.0)
    assert 'momentum_buffer' in opt.state[model[0].weight]
    slots.swap(*switch.activate(B))
    assert bn_weight not in opt.state  # b never trained: fresh state
    assert 'momentum_buffer' in opt.state[model[0].weight]  # shared layers untouched
    step(B, -1.0)
    slots.swap(*switch.activate(A))
    assert torch.equal(opt.state[bn_weight]['momentum_buffer'], momentum_a)
    restored = OptimizerStateSlots(opt, switch.parameters())
    restored.load_state_dict(slots.state_dict())
    assert torch.equal(restored.stash[1][0]['momentum_buffer'],
                       slots.stash[1][0]['momentum_buffer'])


def test_model_without_batchnorm_is_an_error():
    with pytest.raises(ValueError, match='no BatchNorm'):
        SwitchableBatchNorm(nn.Sequential(nn.Linear(2, 2)), [A])


def test_fill_from_live_gives_every_slot_the_initialised_values():
    """Slots are made before the weight initialisation (mmengine's before_run): filling
    from the live values afterwards must reach every slot; loaded slots are left alone."""
    model = _model()
    switch = SwitchableBatchNorm(model, [A, B, C])
    bn = model[1]
    with torch.no_grad():  # the initialisation after the slots exist (e.g. zero-init)
        bn.weight.zero_()
        bn.bias.fill_(0.5)
    assert not switch.loaded and torch.equal(bn.switchable_weight[2], torch.ones(4))
    assert switch.fill_from_live() == 1
    for slot in range(3):
        assert torch.equal(bn.switchable_weight[slot], torch.zeros(4))
        assert torch.equal(bn.switchable_bias[slot], torch.full((4, ), 0.5))
    switch.activate(C)  # the third subnet now starts from the initialised BN too
    assert torch.equal(bn.weight, torch.zeros(4))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved['1.switchable_weight'][1].fill_(7.0)
    fresh = _model()
    loaded = SwitchableBatchNorm(fresh, [A, B, C])
    fresh.load_state_dict(saved)
    assert loaded.loaded and loaded.fill_from_live() == 0  # a checkpoint's slots are kept
    assert torch.equal(fresh[1].switchable_weight[1], torch.full((4, ), 7.0))


def test_slots_follow_the_subnet_order_whatever_the_order_given():
    model = _model()
    switch = SwitchableBatchNorm(model, [C, 'unstructured@0.8', A])
    assert switch.names == [A, B, C]  # as SparseNetwork.subnets() orders them
    assert [switch.slot_of(n) for n in (A, B, C, 'dense')] == [0, 1, 2, 0]
    bn = model[1]
    model(torch.randn(4, 3, 2, 2) + 3)  # slot 0 (A) is live
    switch.activate(C)
    switch.sync()
    assert torch.equal(bn.switchable_running_mean[2], bn.running_mean)
    assert not torch.equal(bn.switchable_running_mean[0], bn.running_mean)
    with pytest.raises(SubnetNameError, match='listed twice'):
        SwitchableBatchNorm(_model(), [A, 'unstructured@0.5'])
