"""Channel groups: layers whose channels meet at adds, shared consumers or RoI pooling."""
import pytest
import torch
from torch import nn

from mmsparse.core import (MaskSpec, SlimmingError, SparseNetwork, analyze_channels,
                           fold_masks, generate_masks, slim_channels, slim_subnet)
from mmsparse.core.methods.chase import check_uncoupled
from mmsparse.core.patterns import SparsitySpecError
from mmsparse.core.stats import record_positions, subnet_stats
from tiny_models import FPNLike, Residual, build, randomize_bn


class Bottlenecks(nn.Module):
    """Two residual blocks with a projection shortcut (like ResNet-50's stages), a conv
    head flattened into a Linear layer (like the box head), and a prediction layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.b1_conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1_bn = nn.BatchNorm2d(8)
        self.b1_proj = nn.Conv2d(8, 16, 1, bias=False)
        self.b1_proj_bn = nn.BatchNorm2d(16)
        self.b1_out = nn.Conv2d(8, 16, 1, bias=False)
        self.b1_out_bn = nn.BatchNorm2d(16)
        self.b2_conv = nn.Conv2d(16, 8, 3, padding=1, bias=False)
        self.b2_bn = nn.BatchNorm2d(8)
        self.b2_out = nn.Conv2d(8, 16, 1, bias=False)
        self.b2_out_bn = nn.BatchNorm2d(16)
        self.neck = nn.Conv2d(16, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12 * 4 * 4, 20)
        self.cls = nn.Linear(20, 3)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.b1_bn(self.b1_conv(x)))
        x = torch.relu(self.b1_out_bn(self.b1_out(y)) + self.b1_proj_bn(self.b1_proj(x)))
        y = torch.relu(self.b2_bn(self.b2_conv(x)))
        out = self.b2_out_bn(self.b2_out(y))
        out += x  # in place, as MMDetection's Bottleneck does
        x = torch.relu(out)
        x = torch.relu(self.neck(x))  # (N, 12, 4, 4)
        return self.cls(torch.relu(self.fc(x.flatten(1))))


class AddsConstant(Residual):
    """The residual block with 1.0 added to the block's output before the add."""

    def forward(self, x):
        x = torch.relu(self.stem(x))
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + 1.0
        return self.head(torch.relu(out + x))


STREAM = ('b1_out', 'b1_proj', 'b2_out')  # in the order they run


def _bottlenecks(seed=0):
    torch.manual_seed(seed)
    model = randomize_bn(Bottlenecks()).eval()
    x = torch.randn(2, 3, 8, 8)
    return model, (lambda m: m(x)), x


def test_residual_stream_is_one_group_only_when_coupled():
    model, run, _ = _bottlenecks()
    plain = analyze_channels(model, run)
    assert not any(plain.channels[n].removable for n in STREAM)
    assert not plain.channels['neck'].removable  # its channels are flattened into fc
    graph = analyze_channels(model, run, couple=True)
    assert graph.coupled and not plain.coupled
    for name in STREAM:
        info = graph.channels[name]
        assert info.removable, info.reason
        assert info.group == STREAM
    assert {c for n in STREAM for c in graph.channels[n].consumers} == {'b2_conv', 'neck'}
    assert graph.channels['neck'].removable
    assert graph.channels['neck'].expansion == {'fc': 16}
    assert graph.channels['b1_conv'].group == ('b1_conv', )  # ordinary layers stay alone
    # the same answer as before for everything that was removable without coupling
    assert set(plain.removable) <= set(graph.removable)


def test_a_group_touching_a_constant_or_an_unmasked_layer_is_refused():
    model, x = AddsConstant(), torch.randn(2, 3, 8, 8)
    info = analyze_channels(model, lambda m: m(x), couple=True).channels['conv2']
    assert not info.removable and 'non-zero constant' in info.reason
    # Residual: the stem's channels are the identity, so the stem joins conv2's group; the
    # stem stays dense by default, so the group is not a channel layer ...
    model, run, _ = build(Residual)
    assert analyze_channels(model, run, couple=True).channels['conv2'].group == ('stem',
                                                                                 'conv2')
    network = SparseNetwork(model, run, sparsify_output_layers=True, channel_groups=True)
    assert 'conv2' not in network.channel_layers
    # ... unless the stem is masked too.
    model, run, _ = build(Residual)
    network = SparseNetwork(model, run, sparsify_input_layers=True, channel_groups=True)
    assert {'stem', 'conv2'} <= set(network.channel_layers)


def test_layers_sharing_a_consumer_are_grouped_even_without_coupling():
    model, run, _ = build(FPNLike)
    graph = analyze_channels(model, run)
    assert graph.channels['out2'].group == graph.channels['out3'].group == ('out2', 'out3')
    coupled = analyze_channels(model, run, couple=True)
    assert coupled.channels['lateral2'].removable
    assert coupled.channels['lateral2'].group == ('lateral3', 'lateral2')


def _grouped_network():
    model, run, x = _bottlenecks()
    network = SparseNetwork(model, run, sparsify_output_layers=True, channel_groups=True)
    generate_masks(network, ['channel@0.25', 'channel@0.50', 'unstructured@0.50'], MaskSpec())
    return network, x


def test_umg_gives_a_group_one_set_of_channels():
    network, _ = _grouped_network()
    assert STREAM in network.channel_layer_groups()
    for name in ('channel@0.25', 'channel@0.50'):
        spec = network.resolve(name)
        keeps = [network.layers[n].channel_keep(spec) for n in STREAM]
        assert all(torch.equal(k, keeps[0]) for k in keeps)
        assert int(keeps[0].sum()) == 16 - round(spec.ratio * 16)  # exact count
    wide = network.layers['b2_out'].channel_keep(network.resolve('channel@0.25'))
    narrow = network.layers['b2_out'].channel_keep(network.resolve('channel@0.50'))
    assert not (narrow & ~wide).any()  # nested


@pytest.mark.parametrize('name', ['channel@0.25', 'channel@0.50'])
def test_slimmed_groups_compute_the_masked_outputs(name):
    network, x = _grouped_network()
    model = network.model
    network.set_active(name)
    try:
        with torch.no_grad():
            expected = model(x)
    finally:
        network.set_active('dense')
    slim = slim_subnet(network, name).eval()
    kept = 16 - round(network.resolve(name).ratio * 16)
    assert slim.b1_proj.out_channels == slim.b2_out.out_channels == kept
    assert slim.b2_out_bn.num_features == kept and slim.b2_conv.in_channels == kept
    neck = slim.neck.out_channels
    assert slim.fc.in_features == neck * 16  # every spatial position of each kept channel
    with torch.no_grad():
        assert torch.allclose(slim(x), expected, atol=1e-5)
    # parameter counts of the masked subnet are what slimming removes
    stats = subnet_stats(network, name, record_positions(model, lambda m: m(x)))
    assert stats.params == sum(p.numel() for p in slim.parameters())


def test_slimming_refuses_a_group_cut_apart():
    network, _ = _grouped_network()
    model = fold_masks(network, 'dense')
    keep = {n: torch.ones(16, dtype=torch.bool) for n in STREAM}
    keep['b2_out'] = keep['b2_out'].clone()
    keep['b2_out'][0] = False
    with pytest.raises(SlimmingError, match='are one channel group'):
        slim_channels(model, network.graph, keep)


def test_chase_refuses_channel_groups():
    network, _ = _grouped_network()
    with pytest.raises(SparsitySpecError, match='channel_groups=False'):
        check_uncoupled(network, 'ChaseHook')
