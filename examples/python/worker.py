#!/usr/bin/python3
"""A Fedra worker whose local training is plain PyTorch: random-flip augmentation, AdamW, gradient
clipping and a cosine learning-rate schedule, none of which Fedra's own loop has.

    PYTHONPATH=build/python /usr/bin/python3 examples/python/worker.py --connect 127.0.0.1:7443 --client 0/4

Fedra loads and partitions Fashion-MNIST for it (dataset= and client=, as `fedra worker` would);
everything after that is this file's. The coordinator decides the model (mlp:784-200-10 here, built
with fedra.models.mlp, Fedra's names, so that state dicts match) and the rounds. examples/python/fedadam.py
starts a coordinator with FedAdam and four of these.
"""
import argparse
import math

import fedra  # first: it picks OpenBLAS's kernels before torch loads it (docs/python.md)
import torch
from fedra.models import mlp
from torch import nn


def augment(x):
    """Random horizontal flips, half of each batch (clothing looks alike mirrored)."""
    flip = torch.rand(x.shape[0]) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def train(model, task, epochs, lr):
    x, y = task.data
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    batches = math.ceil(x.shape[0] / 64) * epochs
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=batches)
    torch.manual_seed(task.config["seed"])
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0]).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(augment(x[idx])), y[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            opt.step()
            schedule.step()
            total += loss.item()
            steps += 1
    return total / steps, steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", required=True, help="the coordinator, HOST:PORT")
    ap.add_argument("--client", default="0/1", help="this worker's part of the data, I/N")
    ap.add_argument("--dataset", default="fmnist", help="a Fedra dataset spec (docs/data.md)")
    ap.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW's peak learning rate")
    ap.add_argument("--token", default="", help="the job's token, if it has one")
    a = ap.parse_args()
    model = mlp(784, 200, 10)
    worker = fedra.Worker(connect=a.connect, name="py-" + a.client.split("/")[0], dataset=a.dataset,
                          client=a.client, token=a.token, log_level="warn")
    for task in worker.tasks():
        model.load_state_dict(task.model)
        loss, steps = train(model, task, a.epochs, a.lr)
        task.reply(model.state_dict(), num_examples=task.data[0].shape[0],
                   metrics={"train_loss": loss, "steps": steps})
        print(f"round {task.round}: train_loss {loss:.4f} over {steps} steps", flush=True)


if __name__ == "__main__":
    main()
