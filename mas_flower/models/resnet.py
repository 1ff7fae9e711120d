"""ResNet-18 encoder (torchvision, random init) with the reference Xception decoders.

The trunk is torchvision's ResNet-18 stem and `layer1`-`layer3`: stride 16 and 256 channels, the
same representation shape as the reference Xception (256 x S/16 x S/16), so the same decoders fit.
`layer4` (8.4 M parameters at stride 32) is left out to keep the encoder near the reference size.
Submodule names follow torchvision's, so its ImageNet weights could be loaded by name later.
"""

from __future__ import annotations

from torch import Tensor, nn

from mas_flower.models.multitask import MultiTaskNet, assemble
from mas_flower.models.registry import register_model
from mas_flower.models.xception import decoder_for

STRIDE = 16


class ResNet18Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18 as tv_resnet18  # slow import: only when used

        trunk = tv_resnet18(weights=None)  # never downloads
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


@register_model(stride=STRIDE)
def resnet18(tasks: str, *, seed: int | None = None) -> MultiTaskNet:
    """torchvision ResNet-18 trunk (to layer3, 256 channels, stride 16) + reference Xception decoders."""
    return assemble("resnet18", tasks, stride=STRIDE, encoder=ResNet18Encoder, decoder=decoder_for, seed=seed)
