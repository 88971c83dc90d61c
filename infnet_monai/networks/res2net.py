"""Res2Net-50 v1b 26w×4s backbone (Gao et al., TPAMI 2021), the encoder of Inf-Net.

Deep stem (three 3×3 convolutions 32-32-64), average-pool downsampling in the shortcuts
("v1b"), stages of [3, 4, 6, 3] Bottle2neck blocks with base width 26 and scale 4. Module
names follow the reference implementation (``conv1``, ``bn1``, ``layer1``…``layer4``), so an
ImageNet checkpoint loads by name once its classifier is dropped.

Input ``(B, 3, H, W)``; :meth:`Res2Net50.forward` returns the four stage features
``(B, 256, H/4, W/4)``, ``(B, 512, H/8, W/8)``, ``(B, 1024, H/16, W/16)``,
``(B, 2048, H/32, W/32)``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

__all__ = ["Bottle2neck", "Res2Net50"]


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1×1 conv, ``scale`` hierarchical 3×3 groups, 1×1 conv, residual.

    ``first`` marks the first block of a stage ("stage" type): its groups do not add the
    previous group's output and the last group is average-pooled instead of passed through.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        base_width: int = 26,
        scale: int = 4,
        first: bool = False,
    ) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / 64.0)))
        self.conv1 = nn.Conv2d(inplanes, width * scale, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.nums = 1 if scale == 1 else scale - 1
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False) for _ in range(self.nums)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(self.nums))
        # the untouched last group: identity in normal blocks, average pooling in a stage's first
        self.pool: nn.Module = (
            nn.AvgPool2d(kernel_size=3, stride=stride, padding=1) if first else nn.Identity()
        )
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.first = first
        self.scale = scale
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        groups = torch.split(out, self.width, 1)
        outs: List[torch.Tensor] = []
        sp = groups[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = groups[i] if (i == 0 or self.first) else sp + groups[i]
            sp = self.relu(bn(conv(sp)))
            outs.append(sp)
        if self.scale != 1:
            outs.append(self.pool(groups[self.nums]))
        out = self.bn3(self.conv3(torch.cat(outs, 1)))
        return self.relu(out + self.downsample(x))


class Res2Net50(nn.Module):
    """Res2Net-50 v1b 26w×4s feature extractor (no classifier).

    Args:
        base_width: width of each 3×3 group at the first stage (26).
        scale: number of groups per block (4).
        layers: blocks per stage ([3, 4, 6, 3]).
    """

    def __init__(self, base_width: int = 26, scale: int = 4, layers: Tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.base_width = base_width
        self.scale = scale
        self.inplanes = 64
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(64, layers[0])
        self.layer2 = self._make_stage(128, layers[1], stride=2)
        self.layer3 = self._make_stage(256, layers[2], stride=2)
        self.layer4 = self._make_stage(512, layers[3], stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_stage(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottle2neck.expansion:
            downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(self.inplanes, planes * Bottle2neck.expansion, kernel_size=1, stride=1, bias=False),
                nn.BatchNorm2d(planes * Bottle2neck.expansion),
            )
        kw = dict(base_width=self.base_width, scale=self.scale)
        stage = [Bottle2neck(self.inplanes, planes, stride, downsample=downsample, first=True, **kw)]
        self.inplanes = planes * Bottle2neck.expansion
        stage += [Bottle2neck(self.inplanes, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return x1, x2, x3, x4
