"""Fedra's own local training loop, written in Python: a starting point for yours.

`sgd(model, task)` does exactly what a C++ worker does for a fedavg.fit or async.train
(core/training/training.cc train_local): a fresh optimiser each task, one torch.randperm per epoch
from a generator seeded with the task's seed, batches in that order, at most local_steps steps,
FedProx's proximal term when proximal_mu > 0. On the worker's Fedra dataset (Worker(dataset=...))
it gives the C++ worker's model to the last bit (tests/python). Copy it and change what you need.
"""
import torch
from torch import nn

__all__ = ["sgd", "loss_of"]


def loss_of(name):
    """The loss function of a job's `loss` name (docs/models.md): ce, mse, l1 or bce."""
    if name == "ce":
        return nn.functional.cross_entropy
    if name == "mse":
        return lambda out, y: nn.functional.mse_loss(out.reshape(y.shape), y)
    if name == "l1":
        return lambda out, y: nn.functional.l1_loss(out.reshape(y.shape), y)
    if name == "bce":
        return lambda out, y: nn.functional.binary_cross_entropy_with_logits(out.reshape(y.shape), y.to(out.dtype))
    raise ValueError(f"loss '{name}' has no Python version here (ce, mse, l1, bce)")


def sgd(model, task, data=None):
    """Trains `model` (the task's global model loaded) in place as Fedra's loop would.

    data: (inputs, targets); default task.data. Returns (mean loss, steps) for task.reply's metrics.
    """
    c = task.config
    x, y = data if data is not None else task.data
    loss_fn = loss_of(c["loss"])
    # foreach: one multi-tensor operation per update step instead of one per parameter (the same
    # arithmetic on each element, so the same bits as the C++ loop's, with less Python per step).
    if c["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=c["lr"], momentum=c["momentum"],
                              weight_decay=c["weight_decay"], foreach=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"], foreach=True)
    params = list(model.parameters())
    anchor = [p.detach().clone() for p in params] if c["proximal_mu"] > 0 else None
    g = torch.Generator()
    g.manual_seed(c["seed"])
    torch.manual_seed(c["seed"])  # dropout's draws, as the C++ loop seeds them
    model.train()
    steps, seen, loss_sum = 0, 0, 0.0
    cap = c["local_steps"]
    for _ in range(c["epochs"]):
        perm = torch.randperm(x.shape[0], generator=g)
        for begin in range(0, x.shape[0], c["batch_size"]):
            if cap > 0 and steps >= cap:
                break
            idx = perm[begin:begin + c["batch_size"]]
            opt.zero_grad(set_to_none=True)  # the first backward writes each gradient: 0 + g is g
            loss = loss_fn(model(x.index_select(0, idx)), y.index_select(0, idx))
            loss.backward()
            if anchor is not None:
                with torch.no_grad():
                    for p, p0 in zip(params, anchor):
                        if p.grad is not None:
                            p.grad.add_(p - p0, alpha=c["proximal_mu"])
            opt.step()
            loss_sum += loss.item() * idx.shape[0]
            seen += idx.shape[0]
            steps += 1
        if cap > 0 and steps >= cap:
            break
    return loss_sum / max(seen, 1), steps
