#!/usr/bin/python3
"""A strategy written in Python: FedAvg's three override points as a fedra.FedAvg subclass, run by
the C++ coordinator in this process against FedAvg itself, on the same non-IID Fashion-MNIST split.

    ./scripts/build.sh && PYTHONPATH=build/python /usr/bin/python3 examples/python/strategy.py [--rounds 5]

NovaM (FedNova's normalised averaging, server momentum, a decaying learning rate):
  configure      each worker's local training: lr 0.05 x 0.8^(round-1), and the slower worker a
                 smaller local_steps cap, so the workers run different numbers of steps
  aggregate      FedNova (Wang et al. 2020): each worker's change divided by its own steps, then
                 scaled by the mean steps, so a worker that ran more steps does not pull harder
  server_update  server momentum (Hsu et al. 2019), its velocity kept on this object
"""
import argparse

import fedra
import torch
from fedra.models import mlp


class NovaM(fedra.FedAvg):
    def __init__(self, momentum=0.5):
        self.momentum, self.velocity = momentum, None

    def configure(self, round, worker):
        steps = 60 if worker["name"].endswith("-0") else 200
        return {"lr": 0.05 * 0.8 ** (round - 1), "local_steps": steps}

    def aggregate(self, global_model, updates, round):
        n = sum(u["num_examples"] for u in updates)
        p = [u["num_examples"] / n for u in updates]
        tau = sum(pi * u["steps"] for pi, u in zip(p, updates))
        return {k: g - tau * sum(pi * (g - u["weights"][k]) / u["steps"] for pi, u in zip(p, updates))
                for k, g in global_model.items()}

    def server_update(self, global_model, aggregate, round):
        d = {k: global_model[k] - aggregate[k] for k in global_model}
        self.velocity = d if self.velocity is None else {k: self.momentum * self.velocity[k] + d[k] for k in d}
        return {k: global_model[k] - self.velocity[k] for k in d}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = mlp(784, 200, 10)
    common = dict(workers=a.workers, rounds=a.rounds, partition="dirichlet:alpha=0.5", seed=3,
                  options={"fedavg.local_steps": 200, "fedavg.lr": 0.05})
    print("FedAvg (C++ parts):", flush=True)
    plain = fedra.simulate(fedra.loops.sgd, model, **common)
    print("NovaM (Python parts):", flush=True)
    nova = fedra.simulate(fedra.loops.sgd, model, strategy=NovaM(), **common)
    last = lambda m: (m[-1] if isinstance(m, list) else m.iloc[-1].to_dict())["test_accuracy"]  # noqa: E731
    print(f"test accuracy after {a.rounds} rounds: FedAvg {last(plain):.4f}, NovaM {last(nova):.4f}")


if __name__ == "__main__":
    main()
