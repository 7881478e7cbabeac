"""The core on a CUDA device gives exactly the CPU's masks (runs only where torch sees a GPU).

CI has no GPU, so these are skipped there; on a GPU machine they guard against tensors made
on the CPU inside functions that receive CUDA tensors (unified mask generation once failed on
the GPU that way, in the radix path taken for tensors over 65,536 elements).
"""
import copy

import pytest
import torch

from mmsparse.core import SparseNetwork, generate_masks
from mmsparse.core.methods.chase import select_channels
from mmsparse.core.patterns import nested_levels
from mmsparse.core.subnets import parse_subnet
from tiny_models import FPNLike, build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

SUBNETS = ['unstructured@0.30', 'unstructured@0.70', 'channel@0.25', 'channel@0.50',
           'nm@2:4', 'block@0.50']


@pytest.mark.parametrize('numel', [1000, 300 * 300])  # the simple and the radix path
def test_nested_levels_on_cuda_equal_the_cpu_ones(numel):
    torch.manual_seed(0)
    scores = torch.rand(numel).abs()
    scores[::7] = scores[3]  # ties
    ratios = [0.2, 0.5, 0.9]
    assert torch.equal(nested_levels(scores.cuda(), ratios).cpu(), nested_levels(scores, ratios))


def test_generate_masks_on_cuda_equal_the_cpu_ones():
    model, run, _ = build(FPNLike)
    cpu = SparseNetwork(model, run)
    gpu = copy.deepcopy(cpu)
    gpu.model.cuda()
    generate_masks(cpu, SUBNETS)
    generate_masks(gpu, SUBNETS)
    checked = 0
    for name in SUBNETS:
        spec = parse_subnet(name)
        for layer_name, layer in cpu.layers.items():
            mask, expected = gpu.layers[layer_name].mask_for(spec), layer.mask_for(spec)
            if expected is None:  # the layer takes no part in this subnet
                assert mask is None
                continue
            assert mask.is_cuda and torch.equal(mask.cpu(), expected), (name, layer_name)
            checked += 1
    assert checked > 2 * len(SUBNETS)


def test_chase_channel_selection_on_cuda_equals_the_cpu_one():
    torch.manual_seed(0)
    scores = {'a': torch.rand(16), 'b': torch.rand(32)}
    keep = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    floors = {'a': 4, 'b': 8}
    expected = select_channels(scores, keep, 20, floors)
    got = select_channels({n: s.cuda() for n, s in scores.items()},
                          {n: k.cuda() for n, k in keep.items()}, 20, floors)
    assert all(torch.equal(got[n].cpu(), expected[n]) for n in scores)
