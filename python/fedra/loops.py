"""Fedra's own local training loop, written in Python: a starting point for yours.

`sgd(model, task)` does exactly what a C++ worker does for a fedavg.fit or async.train
(core/training/training.cc train_local): a fresh optimiser each task, one torch.randperm per epoch
from a generator seeded with the task's seed, batches in that order, at most local_steps steps,
FedProx's proximal term when proximal_mu > 0. On the worker's Fedra dataset (Worker(dataset=...))
it gives the C++ worker's model to the last bit (tests/python). Copy it and change what you need.
"""
import torch
from torch import nn

from . import _fedra

__all__ = ["sgd", "evaluate", "loss_of"]


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
    # The C++ worker's own optimiser (torch::optim's SGD or Adam, FedProx's proximal term), and one
    # call per step for backward, step and the loss's running sum, as the C++ loop keeps it: Python
    # between calls is what a step costs beyond the C++ loop's (benchmarks/python_worker.py; in
    # your own loop, loss.backward() and any torch.optim optimiser do the same work).
    opt = _fedra.Optimizer(list(model.parameters()), c["optimizer"], lr=c["lr"], momentum=c["momentum"],
                           weight_decay=c["weight_decay"], proximal_mu=c["proximal_mu"])
    g = torch.Generator()
    g.manual_seed(c["seed"])
    torch.manual_seed(c["seed"])  # dropout's draws, as the C++ loop seeds them
    model.train()
    cap = c["local_steps"]
    for _ in range(c["epochs"]):
        perm = torch.randperm(x.shape[0], generator=g)
        for begin in range(0, x.shape[0], c["batch_size"]):
            if cap > 0 and opt.steps >= cap:
                break
            idx = perm[begin:begin + c["batch_size"]]
            opt.zero_grad()
            loss = loss_fn(model(x.index_select(0, idx)), y.index_select(0, idx))
            opt.backward_step(loss, idx.shape[0])  # loss.backward(); opt.step(); loss_sum += loss * n
        if cap > 0 and opt.steps >= cap:
            break
    return opt.loss_sum / max(opt.examples, 1), opt.steps


@torch.no_grad()
def evaluate(model, task, data, batch_size=1000):
    """Evaluates `model` (the task's global model loaded) on data = (inputs, targets) as Fedra's
    evaluation does: the mean loss, and for classification how many the argmax gets right (bce: the
    sign; regression: 0). Returns (num_examples, loss, correct) for task.reply_evaluation."""
    x, y = data
    loss_fn = loss_of(task.config["loss"])
    model.eval()
    loss_sum, correct = 0.0, 0
    for begin in range(0, x.shape[0], batch_size):
        out = model(x[begin:begin + batch_size])
        target = y[begin:begin + batch_size]
        loss_sum += loss_fn(out, target).item() * target.shape[0]
        if task.config["loss"] == "ce":
            correct += int((out.argmax(1) == target).sum())
        elif task.config["loss"] == "bce":
            correct += int(((out.reshape(target.shape) > 0) == (target > 0.5)).sum())
    model.train()
    return x.shape[0], loss_sum / max(x.shape[0], 1), correct
