"""nanotorch.nn: layers with explicit, hand-written backward passes (one short file per idea)."""
from nanotorch.nn.module import Module, Parameter, StateDictMismatch
from nanotorch.nn.container import ModuleList, Sequential
from nanotorch.nn.conv import Conv2d
from nanotorch.nn.batchnorm import BatchNorm1d, BatchNorm2d
from nanotorch.nn.activation import GELU, LeakyReLU, ReLU, Sigmoid, Tanh
from nanotorch.nn.pooling import AdaptiveAvgPool2d, MaxPool2d
from nanotorch.nn.dropout import Dropout
from nanotorch.nn.linear import Flatten, Identity, Linear
from nanotorch.nn.loss import CrossEntropyLoss
from nanotorch.nn.fused import ConvBNGELU
from nanotorch.nn import init, utils

__all__ = ["Module", "Parameter", "Sequential", "StateDictMismatch", "Conv2d", "BatchNorm1d", "BatchNorm2d", "GELU",
           "ReLU", "AdaptiveAvgPool2d", "MaxPool2d", "Dropout", "Flatten", "Linear", "CrossEntropyLoss", "ConvBNGELU",
           "init", "utils", "ModuleList", "Identity", "LeakyReLU", "Sigmoid", "Tanh"]

