"""A model from your own file: LeNet-5 for small grayscale or colour images.

`model.name = "simulations/examples/user_model.py:lenet"` makes fedlayer call `lenet` with the data's
`input_shape` and `num_classes`, plus the config's `[model.options]` as keyword arguments.
"""

import torch
from torch import nn


def lenet(input_shape: tuple[int, int, int], num_classes: int, width: int = 6) -> nn.Module:
    """Two 5x5 convolutions (`width` and 16 / 6 * `width` channels) with max pooling, then three linear layers."""
    channels, height, _ = input_shape
    wide = 16 * width // 6
    features = nn.Sequential(
        nn.Conv2d(channels, width, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, wide, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, *input_shape)).shape[1]
    return nn.Sequential(
        features,
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
