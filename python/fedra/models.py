"""Fedra's built-in model specs as PyTorch modules, with Fedra's tensor names, so that a Python
worker's state_dict() matches a job whose coordinator was given the spec (docs/models.md)."""
from collections import OrderedDict

from torch import nn

__all__ = ["mlp"]


def mlp(*sizes):
    """The module of `mlp:A-B-...-Z` (core/model/model.cc): flatten, then fc1, relu1, fc2, ... with
    no ReLU after the last layer. mlp(784, 200, 10) is mlp:784-200-10."""
    if len(sizes) < 2:
        raise ValueError("mlp needs at least an input and an output width, e.g. mlp(784, 10)")
    layers = OrderedDict(flatten=nn.Flatten())
    for i in range(len(sizes) - 1):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if i + 2 < len(sizes):
            layers[f"relu{i + 1}"] = nn.ReLU()
    return nn.Sequential(layers)
