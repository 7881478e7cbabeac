"""Folding masks and slicing channels out: same outputs, fewer parameters, plain classes."""
import pickle

import pytest
import torch
from torch import nn

from export_models import (SUBNETS, composite_network, detector_outputs,
                           tiny_mask_rcnn_network)
from mmsparse.core import (SlimmingError, SparsitySpecError, SubnetNameError, channel_keep,
                           fold_masks, is_masked, slim_channels, slim_subnet)
from tiny_models import ConvBNBias, Deconv, LinearHead, Residual


def _masked_output(network, x, name):
    network.model.eval()
    network.set_active(name)
    try:
        with torch.no_grad():
            return network.model(x)
    finally:
        network.set_active('dense')


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _check_shapes(model):
    for name, m in model.named_modules():
        if isinstance(m, nn.ConvTranspose2d):
            assert m.weight.shape[:2] == (m.in_channels, m.out_channels // m.groups), name
        elif isinstance(m, nn.Conv2d):
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels // m.groups), name
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), name
        elif isinstance(m, nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                assert t.shape == (m.num_features, ), name
        if getattr(m, 'bias', None) is not None and not isinstance(m, nn.BatchNorm2d):
            out_axis = 1 if isinstance(m, nn.ConvTranspose2d) else 0
            assert m.bias.shape == (m.weight.shape[out_axis], ), name


def test_composite_has_every_slicing_kind():
    network, _ = composite_network()
    channels = network.graph.channels
    assert {'res.conv1', 'conv', 'up', 'fc1', 'fc2'} <= set(network.channel_layers)
    assert channels['conv'].followers == ['bn'] and channels['conv'].consumers == ['up']
    assert channels['up'].consumers == ['down'] and channels['fc2'].consumers == ['cls']


@pytest.mark.parametrize('name', SUBNETS)
def test_fold_masks_is_an_ordinary_model_with_the_masked_outputs(name):
    network, x = composite_network()
    folded = fold_masks(network, name)
    assert not any(is_masked(m) for m in folded.modules())
    assert not any('mask_' in key for key in folded.state_dict())
    assert not any(m._forward_hooks for m in folded.modules())
    assert type(folded.res.conv1) is nn.Conv2d and type(folded.up) is nn.ConvTranspose2d
    assert not hasattr(folded, '_mmsparse_network')
    pickle.loads(pickle.dumps(folded))  # nothing unpicklable (or mmsparse) left behind
    folded.eval()
    with torch.no_grad():
        assert torch.equal(folded(x), _masked_output(network, x, name))
    # The co-trained network is untouched: still masked, dense weights intact.
    assert is_masked(network.model.res.conv1) and network.active.name == 'dense'
    masks = network.effective_masks(name)
    zeros = sum(int((folded.get_submodule(n).weight == 0).sum()) for n in network.layers)
    if name.startswith('channel'):
        # exactly the removed output rows (consumers' weights stay: their inputs are zero)
        rows = sum(int((~network.layers[n].channel_keep(network.resolve(name))).sum()) *
                   network.layers[n].dense_weight[0].numel() for n in network.channel_layers)
        assert zeros == rows
        assert (folded.bn.weight == 0).sum() == (folded.bn.bias == 0).sum() == 4
    else:
        removed = sum(int((~m).sum()) for m in masks.values() if m is not None)
        assert zeros == removed


def test_fold_ands_several_masks():
    network, _ = composite_network()
    both = fold_masks(network, ['unstructured@0.50', 'nm@2:4'])
    u = network.layers['fc1'].mask_for(network.resolve('unstructured@0.50'))
    nm = network.layers['fc1'].mask_for(network.resolve('nm@2:4'))
    assert torch.equal(both.fc1.weight != 0, u & nm & (network.layers['fc1'].dense_weight != 0))


@pytest.mark.parametrize('cls', [None, ConvBNBias, Residual, LinearHead, Deconv])
def test_slimmed_channel_subnet_matches_the_masked_model(cls):
    network, x = composite_network(cls)
    expected = _masked_output(network, x, 'channel@0.50')
    slim = slim_subnet(network, 'channel@0.50')
    _check_shapes(slim)
    assert _count(slim) < _count(network.model)
    slim.eval()
    with torch.no_grad():
        out = slim(x)
    for got, want in zip(out if isinstance(out, tuple) else [out],
                         expected if isinstance(expected, tuple) else [expected]):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_slimmed_widths_and_counts():
    network, _ = composite_network()
    keep = channel_keep(network, 'channel@0.50')
    assert set(keep) == set(network.channel_layers)
    slim = slim_subnet(network, 'channel@0.50', also=['unstructured@0.50'])
    assert slim.conv.out_channels == slim.bn.num_features == slim.up.in_channels == 4
    assert slim.up.out_channels == slim.down.in_channels == 4
    assert slim.fc1.out_features == slim.fc2.in_features == 8
    assert slim.fc2.out_features == slim.cls.in_features == 8
    assert slim.res.conv1.out_channels == slim.res.bn1.num_features == 4
    assert slim.res.conv2.in_channels == 4 and slim.res.conv2.out_channels == 8
    # --also: the unstructured mask is folded into what is left
    assert (slim.res.conv2.weight == 0).any()
    only = slim_subnet(network, 'channel@0.50')
    assert _count(slim) == _count(only)
    nonzero = lambda m: sum(int((p != 0).sum()) for p in m.parameters())  # noqa: E731
    assert nonzero(slim) < nonzero(only)


def test_non_removable_layer_is_refused():
    network, _ = composite_network()
    model = fold_masks(network, 'dense')
    with pytest.raises(SlimmingError, match=r'cannot remove output channels of res.conv2: .*Add'):
        slim_channels(model, network.graph, {'res.conv2': torch.ones(8, dtype=torch.bool)})
    bad = {'conv': torch.ones(3, dtype=torch.bool)}
    with pytest.raises(SlimmingError, match=r"keep\['conv'\] must be a bool tensor of shape"):
        slim_channels(model, network.graph, bad)
    with pytest.raises(SlimmingError, match='removes every output channel'):
        slim_channels(model, network.graph, {'conv': torch.zeros(8, dtype=torch.bool)})
    with pytest.raises(SlimmingError, match='still a masked layer: fold_masks first'):
        slim_channels(network.model, network.graph, {'conv': torch.ones(8, dtype=torch.bool)})
    assert model.conv.out_channels == 8  # failed requests change nothing


def test_unknown_subnet_lists_the_valid_ones():
    network, _ = composite_network()
    with pytest.raises(SubnetNameError, match=r"unknown subnet 'channel@0.30'; this model "
                       'holds: dense, unstructured@0.50, channel@0.50, nm@2:4'):
        fold_masks(network, 'channel@0.30')
    with pytest.raises(SparsitySpecError, match='nm@2:4 is not a channel subnet'):
        channel_keep(network, 'nm@2:4')
    with pytest.raises(SubnetNameError, match="unknown subnet 'channel@0.30'"):
        channel_keep(network, 'channel@0.30')


@pytest.fixture(scope='module')
def tiny_mask_rcnn():
    """The tests' tiny Mask R-CNN (real MMDetection modules), masks from UMG, random init
    with non-trivial BatchNorms, and one preprocessed synthetic image."""
    return tiny_mask_rcnn_network()


def _masked_then_slimmed(network, inputs, samples, name='channel@0.50'):
    """The masked detector's outputs and prediction under ``name``, and its slimmed copy."""
    network.set_active(name)
    try:
        expected = detector_outputs(network.model, inputs, samples)
        with torch.no_grad():
            prediction = network.model.predict(inputs, samples)[0]
    finally:
        network.set_active('dense')
    slim = slim_subnet(network, name).eval()
    _check_shapes(slim)
    return expected, prediction, slim


def _same_detections(slim, inputs, samples, reference):
    with torch.no_grad():
        pred = slim.predict(inputs, samples)[0]
    assert torch.allclose(pred.pred_instances.bboxes, reference.pred_instances.bboxes,
                          atol=1e-3)


def test_tiny_mask_rcnn_slimmed_equals_masked(tiny_mask_rcnn):
    network, inputs, samples = tiny_mask_rcnn
    model = network.model
    expected, reference, slim = _masked_then_slimmed(network, inputs, samples)
    assert not any(is_masked(m) or m._forward_hooks for m in slim.modules())
    assert _count(slim) < 0.75 * _count(model)
    widths = {n: slim.get_submodule(n).weight.shape[0] for n in
              ('backbone.layer1.0.conv1', 'rpn_head.rpn_conv', 'roi_head.bbox_head.shared_fcs.0')}
    assert widths == {'backbone.layer1.0.conv1': 8, 'rpn_head.rpn_conv': 8,
                      'roi_head.bbox_head.shared_fcs.0': 16}
    assert slim.roi_head.mask_head.upsample.weight.shape[1] == 8  # deconv's out axis is 1
    got = detector_outputs(slim, inputs, samples)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        assert torch.allclose(g, e, atol=1e-4, rtol=1e-4)
    _same_detections(slim, inputs, samples, reference)  # the whole inference path


def test_tiny_mask_rcnn_fold_is_exact(tiny_mask_rcnn):
    network, inputs, samples = tiny_mask_rcnn
    for name in ('unstructured@0.50', 'nm@2:4', 'channel@0.50'):
        folded = fold_masks(network, name).eval()
        network.set_active(name)
        try:
            expected = detector_outputs(network.model, inputs, samples)
        finally:
            network.set_active('dense')
        for g, e in zip(detector_outputs(folded, inputs, samples), expected):
            assert torch.equal(g, e), name


def test_tiny_mask_rcnn_channel_groups_slim_the_fpn_and_the_roi_features():
    """With channel_groups the residual streams (with a projection shortcut), the FPN's
    laterals and outputs, and with them RoIAlign, the RPN conv's and the heads' inputs
    shrink; the slimmed detector still computes the masked one's outputs."""
    network, inputs, samples = tiny_mask_rcnn_network(channel_groups=True)
    groups = network.channel_layer_groups()
    assert ('neck.fpn_convs.0.conv', 'neck.fpn_convs.1.conv', 'neck.fpn_convs.2.conv',
            'neck.fpn_convs.3.conv') in groups
    assert any('backbone.layer2.0.downsample.0' in g and 'backbone.layer2.1.conv2' in g
               for g in groups)
    # the stem stays dense, so layer1's stream (its identity) keeps its channels
    assert 'backbone.layer1.0.conv2' not in network.channel_layers
    assert network.graph.channels['neck.fpn_convs.0.conv'].expansion == {
        'roi_head.bbox_head.shared_fcs.0': 49}
    expected, reference, slim = _masked_then_slimmed(network, inputs, samples)
    assert _count(slim) < 0.35 * _count(network.model)
    assert slim.neck.fpn_convs[0].conv.out_channels == slim.rpn_head.rpn_conv.in_channels == 8
    assert slim.roi_head.bbox_roi_extractor.out_channels == 8  # sizes its output buffer
    assert slim.roi_head.bbox_head.shared_fcs[0].in_features == 8 * 49
    assert slim.roi_head.mask_head.convs[0].conv.in_channels == 8
    keep = network.layers['neck.fpn_convs.0.conv'].channel_keep(network.resolve('channel@0.50'))
    got = detector_outputs(slim, inputs, samples)
    for g, e in zip(got[:5], expected[:5]):  # the FPN levels: the kept channels, the rest 0
        assert torch.allclose(g, e[:, keep], atol=1e-4, rtol=1e-4)
        assert not e[:, ~keep].any()
    for g, e in zip(got[5:], expected[5:]):
        assert torch.allclose(g, e, atol=1e-4, rtol=1e-4)
    _same_detections(slim, inputs, samples, reference)


# -- mmsparse/core/export/deploy.py: the torch-only helpers of tools/export_subnet.py --------
def test_measured_sparsity_counts_zeros_and_sliced_weights():
    from mmsparse.core.export.deploy import measured_sparsity
    network, _ = composite_network()
    dense = {n: layer.dense_weight.numel() for n, layer in network.layers.items()}
    folded = fold_masks(network, 'unstructured@0.50')
    assert measured_sparsity(folded, list(network.layers), dense) == pytest.approx(0.5, abs=1e-3)
    slim = slim_subnet(network, 'channel@0.50')
    kept = sum(int((slim.get_submodule(n).weight != 0).sum()) for n in network.layers)
    assert measured_sparsity(slim, list(network.layers), dense) == 1 - kept / sum(dense.values())
    assert measured_sparsity(slim, [], {}) == 0.0


def test_two_four_check_and_cpu_conversion_error():
    from mmsparse.core.export.deploy import ExportError, is_two_four, to_semi_structured
    network, _ = composite_network()
    folded = fold_masks(network, 'nm@2:4')
    assert is_two_four(folded.fc1.weight) and not is_two_four(network.layers['fc1'].dense_weight)
    assert not is_two_four(torch.ones(4, 6))  # in_features not a multiple of 4
    if not torch.cuda.is_available():
        with pytest.raises(ExportError, match=r'needs a CUDA GPU .*compute capability 8\.0\+'):
            to_semi_structured(folded, ['fc1'])


def test_plain_value_keeps_only_weights_only_loadable_types():
    import numpy as np
    from mmsparse.core.export.deploy import plain_value
    meta = dict(a=1, b=[1.5, 'x', np.float64(2.0), np.int64(3), None],
                c=dict(d=(True, object())), e=object(), f=np.zeros(2))
    plain = plain_value(meta)
    assert plain == dict(a=1, b=[1.5, 'x', 2.0, 3, None], c=dict(d=[True]))
    assert [type(v) for v in plain['b'][2:4]] == [float, int]


def test_semi_structured_conversion_picks_the_2_4_linear_layers(monkeypatch):
    """The selection logic, with the CUDA kernel replaced by a recorder (no GPU here)."""
    from mmsparse.core.export import deploy as export
    calls = []

    def fake(weight):
        calls.append(tuple(weight.shape))
        return weight.clone()
    monkeypatch.setattr(export, 'semi_structured_support', lambda: None)
    monkeypatch.setattr(torch.sparse, 'to_sparse_semi_structured', fake)
    network, _ = composite_network()
    folded = fold_masks(network, 'nm@2:4')
    with torch.no_grad():
        folded.fc2.weight.fill_(1.0)  # no longer 2:4
    converted, skipped = export.to_semi_structured(folded, list(network.layers))
    assert converted == ['fc1', 'cls'] and calls == [(16, 32), (5, 16)]
    assert skipped['fc2'] == 'weight is not 2:4 sparse'
    assert skipped['res.conv1'] == 'Conv2d, not Linear' and 'up' in skipped
    assert not folded.fc1.weight.requires_grad


def test_semi_structured_conversion_casts_to_the_kernel_dtype(monkeypatch):
    """With ``dtype`` (an fp32 model on a GPU without fp32 2:4 kernels), each converted
    layer's weight and bias are cast first; other layers keep their dtype."""
    from mmsparse.core.export import deploy as export
    seen = []

    def fake(weight):
        seen.append(weight.dtype)
        return weight.clone()
    monkeypatch.setattr(export, 'semi_structured_support', lambda: None)
    monkeypatch.setattr(torch.sparse, 'to_sparse_semi_structured', fake)
    network, _ = composite_network()
    folded = fold_masks(network, 'nm@2:4')
    converted, _ = export.to_semi_structured(folded, list(network.layers), torch.float16)
    assert converted == ['fc1', 'fc2', 'cls'] and seen == [torch.float16] * 3
    assert folded.fc1.weight.dtype == folded.fc1.bias.dtype == torch.float16
    assert folded.res.conv1.weight.dtype == torch.float32


def test_semi_structured_needs_half_for_fp32_off_ampere(monkeypatch):
    """cuSPARSELt has no fp32 kernels and CUTLASS's fp32 ones run on compute capability 8.x
    only: fp32 Linear layers need fp16 on a Hopper GPU, not on an A100, and fp16 never."""
    from mmsparse.core.export import deploy as export
    network, _ = composite_network()
    folded = fold_masks(network, 'nm@2:4')
    names = list(network.layers)
    for capability, fp32_needs_half in (((9, 0), True), ((8, 0), False), ((8, 6), False)):
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda c=capability: c)
        assert export.semi_structured_needs_half(folded, names) is fp32_needs_half
    folded.half()
    assert export.semi_structured_needs_half(folded, names) is False


def test_channel_subnet_params_count_what_slimming_removes(tiny_mask_rcnn):
    """subnet_stats' parameter count of a channel subnet is the slimmed model's real size,
    including the dead input channels of the dense prediction layers (rpn_cls, fc_cls, ...)."""
    from mmsparse.core import record_positions, subnet_stats
    network, inputs, samples = tiny_mask_rcnn
    positions = record_positions(network.model, lambda m: m.predict(inputs, samples))
    stats = subnet_stats(network, 'channel@0.50', positions)
    assert stats.params == _count(slim_subnet(network, 'channel@0.50'))
    rpn_cls = network.effective_masks('channel@0.50')['rpn_head.rpn_cls']
    assert rpn_cls is not None and not rpn_cls.all()  # unmasked, but reads removed channels


def test_export_copies_modules_caching_tensors_with_autograd_history():
    """A head that keeps loss-time tensors (CondInst's ``_raw_positive_infos``) as attributes:
    the export's copy holds them detached instead of failing to deep-copy them."""
    network, x = composite_network()
    cached = network.model(x)  # has autograd history
    network.model.res._cache = dict(scores=[cached * 2])
    assert cached.grad_fn is not None
    folded = fold_masks(network, 'nm@2:4')
    copy_of_cache = folded.res._cache['scores'][0]
    assert copy_of_cache.grad_fn is None and torch.equal(copy_of_cache, (cached * 2).detach())
    assert network.model.res._cache['scores'][0].grad_fn is not None  # the original is kept
    with torch.no_grad():
        out = folded.eval()(x)
    assert torch.equal(out, _masked_output(network, x, 'nm@2:4'))
