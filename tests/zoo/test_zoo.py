"""The 24 Sparse Cocktail subnets on real MMDetection configs (random init, 64 px images).

Two-stage, cascade, one-stage anchor-based and anchor-free detectors, instance segmentation
from mask heads, box heads (RTMDet-Ins, CondInst), SOLOv2 and YOLACT, and backbones with
grouped (RegNet), depthwise (CSPNeXt) and attention / Linear layers (Swin-T). What each
check does is in ``zoo_checks``; ``tools/analysis_tools/zoo_table.py`` writes the same checks
as docs/zoo.md.
"""
import logging
import math

import pytest
import torch
from zoo_checks import (EXPORTED, MEASURED, TRAINED, ZOO, Attached, batch, build, predict,
                        same, subnet_names)

from mmsparse.core import SlimmingError, SparsitySpecError, generate_masks, slim_channels
from mmsparse.core.attach import nm_dense_layers
from mmsparse.core.export.slimming import fold_masks
from mmsparse.core.subnets import parse_subnet
from mmsparse.models import AnalysisError, sparsify_detector


@pytest.fixture(scope='module', params=sorted(ZOO))
def zoo(request):
    torch.set_num_threads(1)  # the machine's cores are shared; one thread is the fastest
    return Attached(request.param)


def test_attach_defaults(zoo):
    net = zoo.network
    assert [s.name for s in net.subnets()][1:] == subnet_names()  # all 24, dense first
    assert net.layers and set(net.channel_layers) <= set(net.layers)
    modules = dict(zoo.model.named_modules())
    for name in net.channel_layers:  # slimming cannot cut a grouped conv's channels
        assert getattr(modules[name], 'groups', 1) == 1, name


def test_dense_equals_the_unmodified_model(zoo):
    assert same(zoo.predict('dense'), predict(zoo.original, zoo.data))


def test_every_subnet_predicts(zoo):
    dense = zoo.predict('dense')
    assert dense['scores'].numel() and dense.keys() >= {'bboxes', 'labels'}  # detections
    for name in subnet_names():
        pred = zoo.predict(name)
        assert pred.keys() == dense.keys(), name
        assert all(torch.isfinite(v).all() for v in pred.values()), name
        assert not same(pred, dense), f'{name} predicts what dense predicts'


def test_measured_sparsity(zoo):
    net = zoo.network
    stats = zoo.stats()
    total = sum(layer.dense_weight.numel() for layer in net.layers.values())
    producers = net.channel_producers()
    for name in MEASURED:
        spec = parse_subnet(name)
        measured = stats[name].sparsity
        if spec.pattern == 'unstructured':  # one global threshold over the masked layers
            assert measured == pytest.approx(spec.ratio, abs=1e-3), name
        elif spec.pattern == 'nm':  # dense where M does not divide the input channels
            dense = set(nm_dense_layers(net, spec.n, spec.m))
            covered = sum(layer.dense_weight.numel() for n, layer in net.layers.items()
                          if n not in dense)
            assert measured == pytest.approx(covered * (1 - spec.n / spec.m) / total), name
        else:  # removed output channels, and the input channels they fed
            removed = 0
            for lname, layer in net.layers.items():
                keep_out = layer.channel_keep(spec) if lname in net.channel_layers else None
                keep_in = (net.consumer_keep(producers[lname], lname, spec)
                           if lname in producers else None)
                out_frac = 1.0 if keep_out is None else keep_out.float().mean().item()
                in_frac = 1.0 if keep_in is None else keep_in.float().mean().item()
                removed += layer.dense_weight.numel() * (1 - out_frac * in_frac)
            assert 0 < measured == pytest.approx(removed / total, rel=1e-4), name
    assert stats['channel@0.10'].sparsity < stats['channel@0.65'].sparsity
    assert all(s.flops < s.flops_dense and s.params <= s.params_dense for s in stats.values())


@pytest.mark.parametrize('subnet', EXPORTED)
def test_export_equals_the_masked_model(zoo, subnet):
    exported, masked = zoo.export(subnet)
    assert same(exported, masked, exact=False), subnet


def test_one_training_step_per_pattern(zoo):
    for subnet in TRAINED:
        loss, change = zoo.train_step(subnet)
        assert math.isfinite(loss) and change > 0, (subnet, loss, change)


def test_nm_leaves_uncoverable_layers_dense_and_names_them():
    """Depthwise convs (RTMDet's CSPNeXt) cannot hold N:M: dense for it, named in the log;
    N:M on nothing but such layers is an error naming the subnet."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('mmsparse')
    logger.addHandler(handler)
    try:
        model = build('rtmdet_tiny')
        net = sparsify_detector(model, image_size=(64, 64))
        generate_masks(net, ['nm@2:4'])
    finally:
        logger.removeHandler(handler)
    dense = nm_dense_layers(net, 2, 4)
    depthwise = [n for n, m in model.named_modules() if n in net.layers
                 and getattr(m, 'groups', 1) == m.weight.shape[0] > 1]
    assert depthwise and set(depthwise) <= set(dense)
    assert all(net.layers[n].mask_for('nm@2:4') is None for n in dense)
    assert all(net.layers[n].mask_for('nm@2:4') is not None for n in net.layers
               if n not in dense)
    message = ' '.join(r.getMessage() for r in records)
    assert 'nm@2:4' in message and all(n in message for n in dense)

    only_depthwise = sparsify_detector(build('rtmdet_tiny'), include=depthwise,
                                       image_size=(64, 64))
    with pytest.raises(SparsitySpecError, match=r'nm@2:4: no selected layer .* divisible'):
        generate_masks(only_depthwise, ['nm@2:4'])


def test_grouped_convs_keep_their_channels_and_slimming_refuses_them():
    model = build('mask-rcnn_regnetx-400mf')
    net = sparsify_detector(model, image_size=(64, 64))
    grouped = next(n for n, m in model.named_modules()
                   if n in net.graph.channels and getattr(m, 'groups', 1) > 1)
    assert 'grouped conv' in net.graph.channels[grouped].reason
    plain = fold_masks(net, 'dense')
    count = plain.get_submodule(grouped).out_channels
    keep = torch.ones(count, dtype=torch.bool)
    keep[0] = False
    with pytest.raises(SlimmingError, match=f'{grouped}.*grouped conv'):
        slim_channels(plain, net.graph, {grouped: keep})
    # A graph that calls it removable (made elsewhere) is refused too, before any change.
    info = net.graph.channels[grouped]
    info.removable, info.reason, info.group = True, '', (grouped, )
    with pytest.raises(SlimmingError, match=f'{grouped} is a grouped conv'):
        slim_channels(plain, net.graph, {grouped: keep})
    assert plain.get_submodule(grouped).weight.shape[0] == count


def test_analysis_failure_names_the_model_and_a_custom_run_works():
    model = build('retinanet_r50')
    loss = model.loss

    def failing_loss(*args, **kwargs):
        raise KeyError('gt_whatever')

    model.loss = failing_loss  # as a head that needs ground truth the batch lacks
    with pytest.raises(AnalysisError, match=r'RetinaNet\.loss .*KeyError.*gt_whatever.*run'):
        sparsify_detector(model, image_size=(64, 64))
    model.loss = loss
    data = batch(model, True)
    net = sparsify_detector(model, run=lambda m: m.loss(data['inputs'], data['data_samples']))
    assert net.layers and net.channel_layers
