"""fedra.Coordinator and fedra.FedAvg: the C++ coordinator in this process, with FedAvg's override
points written in Python."""
from . import _fedra
from ._worker import _args

__all__ = ["Coordinator", "FedAvg"]


class FedAvg:
    """FedAvg with your own parts: subclass it and override any of the three methods; the ones you
    leave are FedAvg's own (C++, as the options say). Run it with fedra.Coordinator(strategy=...) or
    fedra.simulate(strategy=...). The C++ coordinator keeps the networking, the checks on each update
    and on what your methods return (every tensor of the model, its shape and dtype, finite values),
    evaluation, metrics and checkpoints of the model; a method that raises fails that round with its
    words, and the job goes on to the next.

        class Median(fedra.FedAvg):
            def aggregate(self, global_model, updates, round):
                return {k: torch.stack([u["weights"][k] for u in updates]).median(0).values
                        for k in global_model}
    """

    def configure(self, round, worker):
        """The local training of `worker` (a dict: name, num_examples) in `round`: a dict of the options
        to change (lr, momentum, weight_decay, optimizer, local_epochs, local_steps, batch_size,
        proximal_mu), or None for the job's. Checked as the command line's are."""
        return None

    def aggregate(self, global_model, updates, round):
        """The round's aggregate from its accepted updates: a dict of tensors, one per tensor of the model.

        global_model  the model at the round's start (an OrderedDict of name -> tensor)
        updates       a list of dicts: worker, weights (an OrderedDict), num_examples, steps, train_loss,
                      metrics (the worker loop's own figures)
        Updates are held until the round ends: memory O(workers x model). Secure aggregation and DP's
        server mode give only a sum or a noised mean, so they are refused beside it, naming both.
        """
        raise NotImplementedError  # not called unless overridden

    def server_update(self, global_model, aggregate, round):
        """The next global model from the round's aggregate (a server optimiser): a dict of tensors.
        Replaces --fedavg.server_opt (refused beside it). State you keep here lives in Python: a
        resumed job's checkpoint restores the model, not this object."""
        raise NotImplementedError  # not called unless overridden

    def _hooks(self):
        """The methods this subclass overrides, as the extension's keyword arguments."""
        return {name: getattr(self, name) for name in ("configure", "aggregate", "server_update")
                if getattr(type(self), name) is not getattr(FedAvg, name)}


class Coordinator:
    """A coordinator run from Python; every option of `fedra coordinator --help` is a keyword argument
    (dashes as underscores; a strategy's options as fedavg={"rounds": 3} or "fedavg.rounds"=3 in
    **{...}).

    strategy   a fedra.FedAvg subclass's instance: its overridden methods replace FedAvg's parts
    aggregate  aggregate(global_model, updates, round) -> dict of tensors: FedAvg.aggregate as a
               plain function, for a rule alone

        def median(global_model, updates, round):
            return {k: torch.stack([u["weights"][k] for u in updates]).median(0).values for k in global_model}

        fedra.Coordinator(aggregate=median, listen="127.0.0.1:7443", min_workers=3, fedavg={"rounds": 5}).run()
    """

    def __init__(self, strategy=None, aggregate=None, **options):
        self._native = _fedra.Coordinator(_args(options), **_hooks(strategy, aggregate))

    def run(self):
        """Runs the job; returns 0 if it completed, 1 if it failed, 130 if stopped."""
        return self._native.run()

    def stop(self):
        """Ends the job from another thread (summary.json: interrupted)."""
        self._native.stop()


def _hooks(strategy, aggregate):
    """The extension's hooks from a FedAvg subclass and/or an aggregate function."""
    if strategy is not None and not isinstance(strategy, FedAvg):
        raise TypeError(f"strategy must be an instance of a fedra.FedAvg subclass, not {type(strategy).__name__}")
    hooks = strategy._hooks() if strategy is not None else {}
    if aggregate is not None:
        if "aggregate" in hooks:
            raise ValueError("aggregate= and a strategy that overrides aggregate: give one of them")
        hooks["aggregate"] = aggregate
    return hooks
