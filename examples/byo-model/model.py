#!/usr/bin/python3
"""Bring your own model: a network none of Fedra's built-in specs is, as TorchScript.

Seed 000's use case, with Fashion-MNIST standing in for the hospital's document images:
"block A" (convolutions with BatchNorm) must stay where the data is; "block B" (a small
transformer encoder over the image's 7x7 patches) may run in the cloud.

  model.py make OUT.pt [SEED]       scripts the network with torch.jit.script and saves it: the
                                    file Fedra takes as --model torchscript:OUT.pt
  model.py evaluate MODEL.pt [N]    loads a trained model.pt with torch.jit.load and scores it on
                                    the first N (default all 10,000) Fashion-MNIST test images,
                                    read as Fedra reads them; prints {"accuracy": ..., "examples": N}

The network's forward runs its two children in order, so split learning can cut it by child
name: --model 'torchscript:OUT.pt,cut=block_a' keeps block A on the workers.
"""
import gzip
import warnings
import json
import sys

import numpy as np
import torch
import torch.nn as nn

warnings.filterwarnings("ignore", message=".batch_first. was found")  # torch 1.13 scripting TransformerEncoderLayer

FMNIST = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # Fedra's fmnist normalisation (core/data/dataset.cc)


class BlockA(nn.Module):
    """Two conv + BatchNorm + ReLU + max-pool stages: [N, 1, 28, 28] -> [N, 32, 7, 7]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.pool(torch.relu(self.bn2(self.conv2(x))))


class BlockB(nn.Module):
    """The 49 patches as tokens of width 32, a learned position embedding, one transformer encoder
    layer (4 heads, dropout 0.1), mean over tokens, a linear classifier: [N, 32, 7, 7] -> [N, 10]."""

    def __init__(self, classes=10):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 49, 32))
        self.encoder = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.1,
                                                  batch_first=True)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(tokens).mean(1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block_a = BlockA()
        self.block_b = BlockB()

    def forward(self, x):
        return self.block_b(self.block_a(x))


def test_images(n):
    with gzip.open(f"{FMNIST}/t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(f"{FMNIST}/t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(MEAN).div_(STD)
    return x, torch.from_numpy(labels.astype(np.int64))


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "make":
        torch.manual_seed(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
        net = torch.jit.script(Net())
        net.save(sys.argv[2])
        print(f"wrote {sys.argv[2]}: {sum(p.numel() for p in net.parameters())} weights")
    elif len(sys.argv) >= 3 and sys.argv[1] == "evaluate":
        model = torch.jit.load(sys.argv[2])
        model.eval()
        x, y = test_images(int(sys.argv[3]) if len(sys.argv) > 3 else 10000)
        with torch.no_grad():
            correct = sum(int(model(x[i:i + 1000]).argmax(1).eq(y[i:i + 1000]).sum()) for i in range(0, len(y), 1000))
        print(json.dumps({"accuracy": correct / len(y), "examples": len(y)}))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
