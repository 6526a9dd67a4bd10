#!/usr/bin/python3
"""A network none of Fedra's built-in specs is, as a TorchScript file, and its evaluation in
Python: the reference side of tests/integration/torchscript_test.cc.

  byo_model.py make PATH [SEED]        a conv block with BatchNorm, Dropout, a linear classifier
                                      for 28x28x1 images, scripted with torch.jit.script
  byo_model.py make-chain PATH [SEED]  a network whose forward is its children in order (block_a,
                                      flat, fc1, act, fc2: a conv block with BatchNorm, then an MLP):
                                      split learning can cut it by child name
  byo_model.py make-parts DIR [SEED]   the same network as two scripts, DIR/bottom.pt (block_a, flat)
                                      and DIR/top.pt (fc1, act, fc2), and the whole as DIR/whole.pt
  byo_model.py make-tangled PATH       children registered out of the order forward uses them
  byo_model.py regression DIR N        a regression task as tensors files: DIR/reg-train.pt (N rows)
                                      and DIR/reg-test.pt (500 rows), x float32 [., 8] ~ N(0, 1),
                                      y float32 [.] = sin(x0) + x1 * x2 + 0.5 x3 + N(0, 0.1^2)
  byo_model.py fedavg MODEL.pt DIR K ROUNDS EPOCHS BATCH LR SEED OUT.pt [local_bn]
                                      FedAvg by hand in one process: each round, sites 0..K-1
                                      (DIR/site-I.pt, Fedra's worker-I) train a copy of the global
                                      model as Fedra's worker does (core/training/training.cc train_local:
                                      torch's generator seeded with worker_seed(SEED, round, name)
                                      for the dropout draws, randperm from a generator of the same
                                      seed per epoch, SGD, cross-entropy), then parameters and
                                      buffers are averaged weighted by example counts in float64
                                      (integer buffers: the first site's); OUT.pt is the script with
                                      the averaged weights. local_bn: FedBN, each site starts a
                                      round from its own batch norm tensors of the last round
  byo_model.py evaluate MODEL.pt N     loads MODEL.pt with torch.jit.load, evaluates it on the first
                                      N Fashion-MNIST test images, read as Fedra's fmnist dataset
                                      reads them ((pixels / 255 - 0.2860) / 0.3530, core/data/dataset.cc);
                                      prints {"correct": C, "accuracy": C / N}
  byo_model.py sites DIR K N            per-site data as a PyTorch user has it: DIR/site-I.pt for
                                      I < K, each torch.save({'x': X, 'y': Y}) of N training images
                                      (float32 [N, 1, 28, 28], normalised as above; int64 labels),
                                      and DIR/test.pt, the first 500 test images
"""
import gzip
import io
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


class ChainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block_a = BlockA()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(8 * 14 * 14, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.flat(self.block_a(x)))))


class Bottom(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.block_a = net.block_a
        self.flat = net.flat

    def forward(self, x):
        return self.flat(self.block_a(x))


class Top(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.fc1 = net.fc1
        self.act = net.act
        self.fc2 = net.fc2

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Tangled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8 * 14 * 14, 10)
        self.block_a = BlockA()
        self.flat = nn.Flatten()

    def forward(self, x):
        return self.fc(self.flat(self.block_a(x)))


MASK = (1 << 64) - 1


def worker_seed(job_seed, rnd, name):
    """core/net/cohort.cc worker_seed: FNV-1a of the name mixed with the seed and round, splitmix64."""
    h = 1469598103934665603
    for c in name.encode():
        h = ((h ^ c) * 1099511628211) & MASK
    x = h ^ ((job_seed * 0x9E3779B97F4A7C15) & MASK) ^ ((rnd << 32) & MASK)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return (x ^ (x >> 31)) >> 1


def clone(script):
    """A copy of a script module with its own tensors (saved and loaded, as Fedra's workers get it)."""
    buf = io.BytesIO()
    torch.jit.save(script, buf)
    buf.seek(0)
    return torch.jit.load(buf)


def batchnorm_names(script):
    """The state_dict names of every BatchNorm layer's weights and statistics (FedBN keeps them local)."""
    names = set()
    for prefix, m in script.named_modules():
        if "BatchNorm" in m.original_name:
            names.update(f"{prefix}.{n}" if prefix else n for n in m.state_dict())
    return names


def fedavg(model_path, sites, k, rounds, epochs, batch, lr, seed, out, local_bn=False):
    global_model = torch.jit.load(model_path)
    data = [torch.load(f"{sites}/site-{i}.pt") for i in range(k)]
    local = [None] * k  # FedBN: each site's batch norm tensors after its last round
    bn = batchnorm_names(global_model)
    for rnd in range(1, rounds + 1):
        states, weights = [], []
        for i in range(k):
            model = clone(global_model)
            if local_bn and local[i] is not None:
                with torch.no_grad():
                    for name, t in model.state_dict().items():
                        if name in bn:
                            t.copy_(local[i][name])
            model.train()
            s = worker_seed(seed, rnd, f"worker-{i}")
            torch.manual_seed(s)
            gen = torch.Generator().manual_seed(s)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            x, y = data[i]["x"], data[i]["y"]
            for _ in range(epochs):
                perm = torch.randperm(len(y), generator=gen)
                for b in range(0, len(y), batch):
                    idx = perm[b:b + batch]
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
            states.append(dict(model.state_dict()))
            local[i] = {n: t.clone() for n, t in model.state_dict().items() if n in bn}
            weights.append(float(len(y)))
        total = sum(weights)
        averaged = {}
        for name, first in states[0].items():
            if first.is_floating_point():
                acc = sum(st[name].double() * w for st, w in zip(states, weights))
                averaged[name] = (acc / total).to(first.dtype)
            else:
                averaged[name] = first.clone()
        global_model = clone(global_model)
        with torch.no_grad():
            for name, t in global_model.state_dict().items():
                t.copy_(averaged[name])
    global_model.eval()
    global_model.save(out)


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
    elif sys.argv[1] == "make-chain":
        torch.manual_seed(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
        torch.jit.script(ChainNet()).save(sys.argv[2])
    elif sys.argv[1] == "make-parts":
        torch.manual_seed(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
        net = ChainNet()
        torch.jit.script(Bottom(net)).save(f"{sys.argv[2]}/bottom.pt")
        torch.jit.script(Top(net)).save(f"{sys.argv[2]}/top.pt")
        torch.jit.script(net).save(f"{sys.argv[2]}/whole.pt")
    elif sys.argv[1] == "make-tangled":
        torch.jit.script(Tangled()).save(sys.argv[2])
    elif sys.argv[1] == "regression":
        gen = torch.Generator().manual_seed(0)
        for name, n in (("reg-train", int(sys.argv[3])), ("reg-test", 500)):
            x = torch.randn(n, 8, generator=gen)
            y = torch.sin(x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * x[:, 3] + 0.1 * torch.randn(n, generator=gen)
            torch.save({"x": x, "y": y}, f"{sys.argv[2]}/{name}.pt")
    elif sys.argv[1] == "fedavg":
        a = sys.argv[2:]
        fedavg(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), float(a[6]), int(a[7]), a[8],
               len(a) > 9 and a[9] == "local_bn")
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
