#!/usr/bin/python3
"""A network none of Fedra's built-in specs is, as a TorchScript file, and its evaluation in
Python: the reference side of tests/integration/torchscript_test.cc.

  byo_model.py make PATH [SEED]        a conv block with BatchNorm, Dropout, a linear classifier
                                      for 28x28x1 images, scripted with torch.jit.script
  byo_model.py evaluate MODEL.pt N     loads MODEL.pt with torch.jit.load, evaluates it on the first
                                      N Fashion-MNIST test images, read as Fedra's fmnist dataset
                                      reads them ((pixels / 255 - 0.2860) / 0.3530, core/dataset.cc);
                                      prints {"correct": C, "accuracy": C / N}
  byo_model.py sites DIR K N            per-site data as a PyTorch user has it: DIR/site-I.pt for
                                      I < K, each torch.save({'x': X, 'y': Y}) of N training images
                                      (float32 [N, 1, 28, 28], normalised as above; int64 labels),
                                      and DIR/test.pt, the first 500 test images
"""
import gzip
import json
import sys

import numpy as np
import torch
import torch.nn as nn

FMNIST = "/usr/share/datasets/fashion-mnist"


class BlockA(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(torch.relu(self.bn(self.conv(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block_a = BlockA()
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        return self.fc(self.drop(self.flat(self.block_a(x))))


def test_images(n, split="t10k", start=0):
    with gzip.open(f"{FMNIST}/{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[start:start + n]
    with gzip.open(f"{FMNIST}/{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[start:start + n]
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(0.2860).div_(0.3530)
    return x, torch.from_numpy(labels.astype(np.int64))


def main():
    if sys.argv[1] == "make":
        torch.manual_seed(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
        torch.jit.script(Net()).save(sys.argv[2])
    elif sys.argv[1] == "evaluate":
        model = torch.jit.load(sys.argv[2])
        model.eval()
        x, y = test_images(int(sys.argv[3]))
        with torch.no_grad():
            correct = int(model(x).argmax(1).eq(y).sum())
        print(json.dumps({"correct": correct, "accuracy": correct / len(y)}))
    elif sys.argv[1] == "sites":
        out, k, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        for i in range(k):
            x, y = test_images(n, "train", i * n)
            torch.save({"x": x, "y": y}, f"{out}/site-{i}.pt")
        x, y = test_images(500)
        torch.save({"x": x, "y": y}, f"{out}/test.pt")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
