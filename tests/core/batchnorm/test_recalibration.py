"""BatchNorm recalibration is exact and reversible."""
import torch

from mmsparse.core.batchnorm.recalibration import recalibrated_bn, save_bn_stats
from tiny_models import Residual, build


def test_recalibration_estimates_exact_averages_and_restores():
    model, _, x = build(Residual)
    model.eval()
    before = save_bn_stats(model)
    batches = [x, x * 2 + 1]
    with recalibrated_bn(model, lambda m: [m(b) for b in batches]):
        assert not model.bn1.training and model.bn1.momentum is None
        assert int(model.bn1.num_batches_tracked) == 2
        # momentum=None: the running mean is the plain average of the batch means
        feats = [torch.relu(model.stem(b)) for b in batches]
        expected = torch.stack([model.conv1(f).mean((0, 2, 3)) for f in feats]).mean(0)
        assert torch.allclose(model.bn1.running_mean, expected, atol=1e-5)
    after = save_bn_stats(model)
    for name, (mean, var, count, momentum) in before.items():
        assert torch.equal(after[name][0], mean) and torch.equal(after[name][1], var)
        assert torch.equal(after[name][2], count) and after[name][3] == momentum
