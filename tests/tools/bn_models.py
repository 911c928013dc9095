"""Models the tools' tests share: a ResNet-style network with residual branches, a shared block, an
inception-style split, a conv output reused past its batch norm, a transposed conv and an MLP head."""

import torch
from torch import nn

import normlab


class Block(nn.Module):
    """ResNet's basic block: two 3x3 convs with batch norm, and a 1x1 conv shortcut when the shape changes."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = normlab.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class Reuse(nn.Module):
    """The conv's output feeds its batch norm and, past it, a residual sum: folding it would change the sum."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class Branches(nn.Module):
    """Two parallel branches, concatenated (inception style); one grouped conv."""

    def __init__(self, c):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 1), normlab.BatchNorm2d(c))
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=2), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class ResNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), normlab.BatchNorm2d(8), nn.ReLU())
        self.layer1 = Block(8, 8)
        self.layer2 = Block(8, 16, stride=2)
        self.shared = Block(16, 16)  # applied twice: its convs have two uses each
        self.reuse = Reuse(16)
        self.branches = Branches(16)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2, groups=2)
        self.up_bn = normlab.BatchNorm2d(16)
        self.post = nn.BatchNorm2d(16)  # after a ReLU: nothing to fold into
        self.fc1 = nn.Linear(16, 10)
        self.fc1_bn = normlab.BatchNorm1d(10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        x = self.shared(self.shared(x))
        x = self.branches(self.reuse(x))
        x = self.post(torch.relu(self.up_bn(self.up(x))))
        x = x.mean((2, 3))
        return self.fc2(torch.relu(self.fc1_bn(self.fc1(x))))


FOLDABLE = {
    ("stem.0", "stem.1"), ("layer1.conv1", "layer1.bn1"), ("layer1.conv2", "layer1.bn2"),
    ("layer2.conv1", "layer2.bn1"), ("layer2.conv2", "layer2.bn2"), ("layer2.down.0", "layer2.down.1"),
    ("branches.a.0", "branches.a.1"), ("branches.b.0", "branches.b.1"), ("up", "up_bn"), ("fc1", "fc1_bn"),
}  # fmt: skip
NOT_FOLDABLE = {"shared.bn1", "shared.bn2", "reuse.bn", "post"}


def randomize_batchnorm(model, seed=0):
    """Give every batch norm non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, normlab.nn.batchnorm._BatchNorm)):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(c, generator=gen))
                    m.bias.copy_(torch.randn(c, generator=gen))
    return model


def resnet_style(seed=0):
    torch.manual_seed(seed)
    return randomize_batchnorm(ResNetStyle(), seed)
