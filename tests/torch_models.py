"""The classic networks of specs/, written again by hand in PyTorch, as an independent twin of
each spec for tests/test_specs.py.

Nothing here reads the YAML: each builder follows the paper or the torchvision (or
kuangliu/pytorch-cifar) code the spec's header names, and names its modules so the state_dict
keys are the spec's parameter names. ``BUILDERS`` maps a spec's file stem to its builder.
"""

from __future__ import annotations

import torch
from torch import nn


# -- LeNet-5 --------------------------------------------------------------------------------------

class LeNet5(nn.Module):
    """C1-S2-C3-S4-C5-F6-output on 1x32x32, tanh and average pooling."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.s4 = nn.AvgPool2d(2)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.s2(torch.tanh(self.c1(x)))
        x = self.s4(torch.tanh(self.c3(x)))
        x = torch.flatten(torch.tanh(self.c5(x)), 1)
        return self.output(torch.tanh(self.f6(x)))


# -- AlexNet (two towers) -------------------------------------------------------------------------

class AlexNet(nn.Module):
    """Caffe's bvlc_alexnet: grouped conv2/4/5, LRN after relu1 and relu2, 227x227 input;
    torchvision's AdaptiveAvgPool2d((6, 6)) before the classifier (the identity at 227x227)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
        self.pool = nn.MaxPool2d(3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        relu = torch.relu
        x = self.pool(self.norm(relu(self.conv1(x))))
        x = self.pool(self.norm(relu(self.conv2(x))))
        x = relu(self.conv3(x))
        x = relu(self.conv4(x))
        x = self.pool(relu(self.conv5(x)))
        # the identity at 227x227, skipped there: torch.onnx cannot export an adaptive pool with
        # a dynamic batch axis after LRN (it loses the map's size), as benchmarks/ exports it
        if tuple(x.shape[-2:]) != (6, 6):
            x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.drop(relu(self.fc6(x)))
        x = self.drop(relu(self.fc7(x)))
        return self.fc8(x)


# -- VGG with batch norm (torchvision layout) ------------------------------------------------------

VGG_CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, config: str, num_classes: int = 1000):
        super().__init__()
        layers, channels = [], 3
        for v in VGG_CONFIGS[config]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# -- GoogLeNet (torchvision, no aux heads) ---------------------------------------------------------

class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(cin, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        # torchvision's 3x3 where the paper has 5x5, kept for its pretrained weights
        self.branch3 = nn.Sequential(BasicConv2d(cin, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(cin, pool_proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        for name in ("4a", "4b", "4c", "4d", "4e"):
            x = getattr(self, "inception" + name)(x)
        x = self.inception5b(self.inception5a(self.maxpool4(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


# -- ResNet (torchvision BasicBlock; ImageNet or CIFAR stem) ---------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], cifar: bool, num_classes: int):
        super().__init__()
        if cifar:
            self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            stride = 1 if i == 1 else 2
            stage = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNetTiny(nn.Module):
    """specs/resnet_tiny.yaml: a biased 3x3 stem, then two basic blocks of 16 filters."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.layer1(torch.relu(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3)))


# -- MobileNet v1 (kuangliu/pytorch-cifar layout) --------------------------------------------------

class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


class MobileNetV1(nn.Module):
    # (filters, stride) of the 13 depthwise separable blocks, Table 1 of the paper
    CONFIG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, stem_stride: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, cin = [], 32
        for cout, stride in self.CONFIG:
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


# -- x-vector TDNN ----------------------------------------------------------------------------------

class FrameLayer(nn.Module):
    def __init__(self, cin, cout, kernel, dilation=1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        return self.bn(torch.relu(self.conv(x)))


class SegmentLayer(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.fc = nn.Linear(cin, cout)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        return self.bn(torch.relu(self.fc(x)))


class XVectorTDNN(nn.Module):
    """Snyder et al. 2018 with mean pooling over time in place of mean+std statistics."""

    def __init__(self, features: int = 30, num_speakers: int = 1211):
        super().__init__()
        self.frame1 = FrameLayer(features, 512, 5)
        self.frame2 = FrameLayer(512, 512, 3, dilation=2)
        self.frame3 = FrameLayer(512, 512, 3, dilation=3)
        self.frame4 = FrameLayer(512, 512, 1)
        self.frame5 = FrameLayer(512, 1500, 1)
        self.segment6 = SegmentLayer(1500, 512)
        self.segment7 = SegmentLayer(512, 512)
        self.output = nn.Linear(512, num_speakers)

    def forward(self, x):
        for i in range(1, 6):
            x = getattr(self, f"frame{i}")(x)
        x = x.mean(dim=2)
        return self.output(self.segment7(self.segment6(x)))


BUILDERS = {
    "lenet5": LeNet5,
    "alexnet": AlexNet,
    "vgg11_bn": lambda: VGG("A"),
    "vgg16_bn": lambda: VGG("D"),
    "googlenet": GoogLeNet,
    "resnet18": lambda: ResNet([2, 2, 2, 2], cifar=False, num_classes=1000),
    "resnet34": lambda: ResNet([3, 4, 6, 3], cifar=False, num_classes=1000),
    "resnet18_cifar": lambda: ResNet([2, 2, 2, 2], cifar=True, num_classes=10),
    "resnet34_cifar": lambda: ResNet([3, 4, 6, 3], cifar=True, num_classes=10),
    "resnet_tiny": ResNetTiny,
    "mobilenet_v1": lambda: MobileNetV1(stem_stride=2, num_classes=1000),
    "mobilenet_v1_cifar": lambda: MobileNetV1(stem_stride=1, num_classes=10),
    "tdnn": XVectorTDNN,
}


# -- torchvision's ImageNet classifiers, for tests/test_torchvision_import.py --------------------------
# torchvision cannot be imported on this machine (its wheels need the CUDA build of torch), so
# these follow the papers with torchvision's module names, so that parameter names and counts
# are torchvision's.

class TorchvisionAlexNet(nn.Module):
    """torchvision's one-tower AlexNet (64-192-384-256-256 filters, no LRN, no groups)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        conv, relu, pool = nn.Conv2d, lambda: nn.ReLU(inplace=True), lambda: nn.MaxPool2d(3, 2)
        self.features = nn.Sequential(
            conv(3, 64, 11, stride=4, padding=2), relu(), pool(),
            conv(64, 192, 5, padding=2), relu(), pool(),
            conv(192, 384, 3, padding=1), relu(), conv(384, 256, 3, padding=1), relu(),
            conv(256, 256, 3, padding=1), relu(), pool())
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), relu(),
            nn.Dropout(0.5), nn.Linear(4096, 4096), relu(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation as MobileNet-v2 uses it: conv, BN, ReLU6."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expand by 1x1 (unless t = 1), depthwise 3x3, linear 1x1 projection; the input added
    where the shape is kept (Sandler et al. 2018, figure 4)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), Table 2 of the paper
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        blocks, cin = [conv_bn_relu6(3, 32, stride=2)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        blocks.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):
    """Squeeze by 1x1, then 1x1 and 3x3 expansions side by side (Iandola et al. 2016)."""

    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1: a 3x3 stem of 64 and the pools moved early; pools round up."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(inplace=True), pool(),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (to 4k channels), BN-ReLU-conv3x3 (to k): the k new feature maps of
    one layer, read from all the maps before it (Huang et al. 2017)."""

    def __init__(self, cin: int, growth: int, bottleneck: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, maps):
        x = self.conv1(self.relu1(self.norm1(torch.cat(maps, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int, bottleneck: int):
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth, bottleneck)
                          for i in range(layers)})

    def forward(self, x):
        maps = [x]
        for layer in self.values():
            maps.append(layer(maps))
        return torch.cat(maps, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 halving the channels, then a 2x2 average pool."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(cin))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(cin, cout, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    def __init__(self, blocks=(6, 12, 24, 16), growth: int = 32, stem: int = 64,
                 bottleneck: int = 4, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential()
        for name, module in (("conv0", nn.Conv2d(3, stem, 7, 2, 3, bias=False)),
                             ("norm0", nn.BatchNorm2d(stem)), ("relu0", nn.ReLU(inplace=True)),
                             ("pool0", nn.MaxPool2d(3, 2, 1))):
            self.features.add_module(name, module)
        channels = stem
        for i, layers in enumerate(blocks, start=1):
            self.features.add_module(f"denseblock{i}",
                                     DenseBlock(layers, channels, growth, bottleneck))
            channels += layers * growth
            if i != len(blocks):
                self.features.add_module(f"transition{i}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# name -> (builder, the input it is tested at: the smallest size whose adaptive pools
# torch.onnx can export, as average pools of whole windows)
TORCHVISION = {
    "resnet18": (lambda: ResNet([2, 2, 2, 2], cifar=False, num_classes=1000), (3, 64, 64)),
    "alexnet": (TorchvisionAlexNet, (3, 224, 224)),
    "vgg11_bn": (lambda: VGG("A"), (3, 224, 224)),
    "googlenet": (GoogLeNet, (3, 64, 64)),
    "mobilenet_v2": (MobileNetV2, (3, 64, 64)),
    "squeezenet1_1": (SqueezeNet11, (3, 64, 64)),
    "densenet121": (DenseNet, (3, 64, 64)),
}
