#!/usr/bin/python3
"""The seed notebook's tensor-parallel and pipeline cells (../shared/seeds/002, cells 4 and 5),
run as the notebook runs them (same draws from torch.manual_seed(40), same slicing, same
schedule) with Debian's python3-torch, recording every step's loss. With Fedra's OUT/losses.csv
of experiments/notebook-tensor.cfg and notebook-pipeline.cfg it prints the comparison table of
docs/strategies.md and the first step where the two runs part by more than 1e-3.

  /usr/bin/python3 tests/reference/notebook_parallel.py [TENSOR_LOSSES_CSV PIPELINE_LOSSES_CSV]
"""
import csv
import sys

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, a, b, c):
        super().__init__()
        self.w1 = nn.Linear(a, b)
        self.w2 = nn.Linear(b, c)

    def forward(self, x):
        return nn.Sigmoid()(self.w2(nn.ReLU()(self.w1(x))))


torch.manual_seed(40)
x = torch.rand([320, 16])
target = torch.randint(0, 2, [320, 1], dtype=torch.float32)
MLP(16, 8, 1)  # cell 1's model
MLP(16, 8, 1)  # cell 3's model
loss = nn.BCELoss()

# Cell 4: tensor parallel.
model = MLP(16, 8, 1)
w1_0, w1_1 = nn.Linear(16, 4), nn.Linear(16, 4)
w2_0, w2_1 = nn.Linear(4, 1), nn.Linear(4, 1, bias=False)
with torch.no_grad():
    w1_0.weight.copy_(model.w1.weight[:4]); w1_0.bias.copy_(model.w1.bias[:4])
    w1_1.weight.copy_(model.w1.weight[4:]); w1_1.bias.copy_(model.w1.bias[4:])
    w2_0.weight.copy_(model.w2.weight[:, :4]); w2_0.bias.copy_(model.w2.bias)
    w2_1.weight.copy_(model.w2.weight[:, 4:])
weights = [w1_0, w1_1, w2_0, w2_1]
opts = [torch.optim.SGD(w.parameters(), lr=1.0) for w in weights]
tensor_losses = []
for i in range(5001):
    s, e = i * 64 % 320, (i + 1) * 64 % 320
    bx, bt = x[s:e], target[s:e]
    h = torch.cat([nn.ReLU()(w1_0(bx)), nn.ReLU()(w1_1(bx))], axis=1)
    out = loss(nn.Sigmoid()(w2_0(h[:, :4]) + w2_1(h[:, 4:])), bt)
    for w in weights:
        w.zero_grad()
    out.backward()
    for o in opts:
        o.step()
    tensor_losses.append(out.item())

# Cell 5: the pipeline, its schedule as the notebook runs it.
stages = [nn.Sequential(nn.Linear(16, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 1), nn.Sigmoid())]
opts = [torch.optim.SGD(s_.parameters(), lr=0.5) for s_ in stages]
q0b, q1f, q1b = [], [], []
fwd = [True, False]
pipeline_losses = []
batch_idx = 0
while batch_idx < 10000:
    if fwd[0]:
        s, e = batch_idx * 32 % 320, (batch_idx + 1) * 32 % 320
        if e == 0:
            e = -1
        q1f.append((stages[0](x[s:e]), target[s:e]))
        batch_idx += 1
    elif q0b:
        o = q0b.pop(0)
        stages[0].zero_grad()
        o.backward(gradient=o.grad)
        opts[0].step()
    if fwd[1]:
        o0, bt = q1f.pop(0)
        q1b.append((stages[1](o0), o0, bt))
    elif q1b:
        stages[1].zero_grad()
        o1, o0, bt = q1b.pop(0)
        bl = loss(o1, bt)
        bl.backward(inputs=[stages[1][0].weight, stages[1][0].bias, o0], retain_graph=True)
        q0b.append(o0)
        opts[1].step()
        pipeline_losses.append(bl.item())
    if batch_idx > 2:
        fwd[0] = not fwd[0]
    fwd[1] = not fwd[1]

printed_tensor = [0.693, 0.510, 0.367, 0.315, 0.298, 0.285]
printed_pipeline = [0.691, 0.599, 0.423, 0.367, 0.348, 0.330, 0.426, 0.334, 0.276, 0.280]


def read(path):
    with open(path) as f:
        return [float(r["loss"]) if r["loss"] else float("nan") for r in csv.DictReader(f)]


def table(title, label, steps, printed, here, fedra):
    print(f"\n{title}\n")
    print("| " + label + " | " + " | ".join(str(s) for s in steps) + " |")
    print("|---" * (len(steps) + 1) + "|")
    print("| notebook (as printed) | " + " | ".join(f"{v:.3f}" for v in printed) + " |")
    print("| the notebook's cell, python3-torch here | " + " | ".join(f"{here[s]:.3f}" for s in steps) + " |")
    if fedra:
        print("| Fedra over TCP | " + " | ".join(f"{fedra[s]:.4f}" for s in steps) + " |")
        apart = next((k for k, (a, b) in enumerate(zip(here, fedra)) if abs(a - b) > 1e-3 and a == a), None)
        same = sum(1 for a, b in zip(here, fedra) if abs(a - b) <= 1e-4)
        print(f"\nFedra and the cell here agree within 1e-4 on {same} of {len(here)} steps; first step apart by "
              f"more than 1e-3: {apart}")


fedra_t = read(sys.argv[1]) if len(sys.argv) > 2 else None
fedra_p = read(sys.argv[2]) if len(sys.argv) > 2 else None
table("Tensor parallel (loss at iteration):", "iteration", list(range(0, 5001, 1000)), printed_tensor,
      tensor_losses, fedra_t)
table("Pipeline (the notebook's 'iteration k + 3' is micro-batch k):", "micro-batch", list(range(0, 10000, 1000)),
      printed_pipeline, pipeline_losses, fedra_p)
