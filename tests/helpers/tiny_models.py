"""Tiny torch-only models with the structures that matter for channel dependencies."""
import torch
from torch import nn


class ConvBNBias(nn.Module):
    """conv (with bias) -> BN -> ReLU -> conv: the first conv's channels are removable."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu(self.bn1(self.conv1(x))))


class Residual(nn.Module):
    """stem -> [conv1 -> bn1 -> relu -> conv2 -> bn2] + identity -> relu -> head."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.head(torch.relu(out + x))


class FPNLike(nn.Module):
    """Two levels, lateral 1x1 convs summed top-down, 3x3 output convs, a shared head."""

    def __init__(self):
        super().__init__()
        self.c2 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.lateral2 = nn.Conv2d(8, 8, 1)
        self.lateral3 = nn.Conv2d(16, 8, 1)
        self.out2 = nn.Conv2d(8, 8, 3, padding=1)
        self.out3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head_conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head_cls = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        f2 = torch.relu(self.c2(x))
        f3 = torch.relu(self.c3(f2))
        l3 = self.lateral3(f3)
        l2 = self.lateral2(f2) + nn.functional.interpolate(l3, scale_factor=2.0)
        outs = [self.out2(l2), self.out3(l3)]
        return [self.head_cls(torch.relu(self.head_conv(o))) for o in outs]


class LinearHead(nn.Module):
    """flatten -> fc1 -> relu -> fc2 -> relu -> (cls, reg): like Shared2FCBBoxHead."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 16)
        self.cls = nn.Linear(16, 5)
        self.reg = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1)))))
        return self.cls(x), self.reg(x)


class Deconv(nn.Module):
    """conv -> relu -> deconv -> relu -> logits: like FCNMaskHead's upsampling tail."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.upsample = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.logits = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.logits(torch.relu(self.upsample(torch.relu(self.conv(x)))))


class Concat(nn.Module):
    """Two convs concatenated, then a conv: neither producer is removable alone."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.fuse = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.fuse(torch.cat([self.a(x), self.b(x)], 1))


INPUTS = {ConvBNBias: (2, 4, 8, 8), Residual: (2, 3, 8, 8), FPNLike: (1, 3, 16, 16),
          LinearHead: (3, 2, 4, 4), Deconv: (1, 4, 6, 6), Concat: (1, 3, 5, 5)}


class Chain(nn.Module):
    """stem -> conv_a (bias) -> BN -> conv_b -> BN -> conv_c, added to the stem -> head.

    conv_a and conv_b are removable (BN followers, conv consumers); conv_c feeds the add.
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 16, 3, padding=1, bias=True)
        self.bn_a = nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(16, 12, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(12)
        self.conv_c = nn.Conv2d(12, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        a = torch.relu(self.bn_a(self.conv_a(s)))
        b = torch.relu(self.bn_b(self.conv_b(a)))
        return self.head(torch.relu(self.conv_c(b) + s))


def randomize_bn(model):
    """Give every BatchNorm non-trivial statistics and affines (so tests see them act)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    return model


def build(cls, seed=0):
    """A model with non-trivial BN statistics and affines, plus its ``run`` and input."""
    torch.manual_seed(seed)
    model = randomize_bn(cls())
    x = torch.randn(INPUTS[cls])
    return model, (lambda m: m(x)), x
