"""Models. Each is built as ``Model(in_shape=..., out_features=..., **config)`` and emits raw outputs.

Class attributes tell the runner which data a model can take, so that an impossible
combination (a CNN on tabular data) is refused before anything is written.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import math

import torch
from torch import nn

from runner.errors import ConfigError
from runner.text import plural

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}
INITS = ("default", "zeros")


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError("model.activation", name, f"one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _apply_init(model: nn.Module, init: str) -> None:
    if init not in INITS:
        raise ConfigError("model.init", init, f"one of {', '.join(INITS)}")
    if init == "zeros":
        # Zero init is the textbook start for convex models; for deep nets it keeps
        # hidden units identical (symmetry is never broken), which is worth seeing too.
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()


def _positive_sizes(key: str, sizes: Sequence[int]) -> list[int]:
    sizes = list(sizes)
    if any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ConfigError(key, sizes, "a list of integers >= 1")
    return sizes


class Linear(nn.Sequential):
    """One affine layer over the flattened input: linear regression (or a linear classifier)."""

    needs_classes: ClassVar[bool] = False
    needs_images: ClassVar[bool] = False

    def __init__(self, in_shape: Sequence[int], out_features: int, init: str = "default"):
        super().__init__(nn.Flatten(), nn.Linear(math.prod(in_shape), out_features))
        _apply_init(self, init)


class Logistic(Linear):
    """Softmax (multinomial logistic) regression: a linear layer whose outputs are class logits."""

    needs_classes: ClassVar[bool] = True


class MLP(nn.Sequential):
    """A fully connected network: ``hidden`` layer widths, each followed by ``activation``."""

    needs_classes: ClassVar[bool] = False
    needs_images: ClassVar[bool] = False

    def __init__(
        self,
        in_shape: Sequence[int],
        out_features: int,
        hidden: Sequence[int] = (128,),
        activation: str = "relu",
        init: str = "default",
    ):
        widths = [math.prod(in_shape), *_positive_sizes("model.hidden", hidden)]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), _activation(activation)]
        layers.append(nn.Linear(widths[-1], out_features))
        super().__init__(*layers)
        _apply_init(self, init)


class CNN(nn.Sequential):
    """A small convnet for ``(C, H, W)`` images: [conv3x3 → activation → maxpool2] per entry of
    ``channels``, then one hidden dense layer."""

    needs_classes: ClassVar[bool] = False
    needs_images: ClassVar[bool] = True

    def __init__(
        self,
        in_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        activation: str = "relu",
        init: str = "default",
    ):
        in_channels, height, width = in_shape
        channels = _positive_sizes("model.channels", channels)
        if hidden < 1:
            raise ConfigError("model.hidden", hidden, "an integer >= 1")
        if min(height, width) >> len(channels) < 1:
            raise ConfigError(
                "model.channels",
                channels,
                f"at most {plural(int(math.log2(min(height, width))), 'conv block')} for {height}x{width} images "
                "(each block halves the image)",
            )
        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels], channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), _activation(activation), nn.MaxPool2d(2)]
        flat = channels[-1] * (height >> len(channels)) * (width >> len(channels))
        layers += [nn.Flatten(), nn.Linear(flat, hidden), _activation(activation), nn.Linear(hidden, out_features)]
        super().__init__(*layers)
        _apply_init(self, init)
