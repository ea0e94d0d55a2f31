"""Building blocks of the YOLOv5 (release 3.0) network.

Attribute names (``conv``, ``bn``, ``cv1`` ... ``cv4``, ``m``) are those of the published v3.0
checkpoints, so that their state dicts load by name. Every BatchNorm uses eps 1e-3 and momentum 0.03,
the values the published weights were trained with.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class Conv(nn.Module):
    """Conv2d (no bias, "same" padding for odd kernels) -> BatchNorm2d -> Hardswish."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = _batch_norm(c2)
        self.act = nn.Hardswish(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 Conv to ``c2 * e`` channels, 3x3 Conv to ``c2``; residual add when ``shortcut`` and c1 == c2."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """Cross-stage-partial block: two half-width branches, one through ``n`` Bottlenecks.

    Branch A: Conv1x1 (c1 -> c2/2) -> n Bottlenecks (e = 1.0) -> plain Conv2d 1x1; branch B: plain
    Conv2d 1x1 (c1 -> c2/2). The concatenation goes through BatchNorm, LeakyReLU(0.1) and Conv1x1 to c2.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = nn.Conv2d(c1, hidden, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(hidden, hidden, 1, 1, bias=False)
        self.cv4 = Conv(2 * hidden, c2, 1, 1)
        self.bn = _batch_norm(2 * hidden)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.cv3(self.m(self.cv1(x)))
        b = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((a, b), dim=1))))


class SPP(nn.Module):
    """Spatial pyramid pooling: Conv1x1 to c1/2, concatenated with stride-1 max-pools of each kernel, Conv1x1 to c2.

    When the kernels grow as k, 2k - 1, 3k - 2 ... (the default 5, 9, 13), each pool is computed as the previous
    one pooled again with the first kernel: the same maxima (a window of 2k - 1 is two windows of k), a
    fraction of the work (Ultralytics' SPPF does the same).
    """

    def __init__(self, c1: int, c2: int, k: Sequence[int] = (5, 9, 13)):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=size, stride=1, padding=size // 2) for size in k)
        self.chained = all(size == k[0] + i * (k[0] - 1) for i, size in enumerate(k)) and k[0] % 2 == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [self.cv1(x)]
        for pool in self.m:
            pooled.append(self.m[0](pooled[-1]) if self.chained else pool(pooled[0]))
        return self.cv2(torch.cat(pooled, dim=1))


class Focus(nn.Module):
    """Space-to-depth then Conv: (B, C, H, W) -> (B, c2, H/2, W/2). H and W must be even.

    The four phases are concatenated in the order (even row, even col), (odd row, even col),
    (even row, odd col), (odd row, odd col): the order the published first-layer weights expect.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, g, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(phases, dim=1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels by default)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
