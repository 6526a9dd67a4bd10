"""fedra.Coordinator: the C++ coordinator in this process, optionally with FedAvg's rule in Python."""
from . import _fedra
from ._worker import _args


class Coordinator:
    """A coordinator run from Python; every option of `fedra coordinator --help` is a keyword argument
    (dashes as underscores; a strategy's options as fedavg={"rounds": 3} or "fedavg.rounds"=3 in
    **{...}).

    aggregate(global_model, updates, round) -> dict of tensors replaces FedAvg's weighted mean: it gets
    the global model (an OrderedDict) and the round's accepted updates, each a dict with worker,
    weights (an OrderedDict), num_examples, steps and train_loss, and returns the aggregate (the next
    model before the server optimiser, if any). The C++ coordinator keeps the networking, the checks
    on each update and on the aggregate, secure aggregation's and DP's refusals (a Python rule needs
    each update: --fedavg.secagg and --fedavg.dp server are refused, naming the rule), evaluation,
    metrics and checkpoints. The updates are held until the round ends: memory O(workers x model).

        def median(global_model, updates, round):
            return {k: torch.stack([u["weights"][k] for u in updates]).median(0).values for k in global_model}

        fedra.Coordinator(aggregate=median, listen="127.0.0.1:7443", min_workers=3, fedavg={"rounds": 5}).run()
    """

    def __init__(self, aggregate=None, **options):
        self._native = _fedra.Coordinator(_args(options), aggregate)

    def run(self):
        """Runs the job; returns 0 if it completed, 1 if it failed, 130 if stopped."""
        return self._native.run()

    def stop(self):
        """Ends the job from another thread (summary.json: interrupted)."""
        self._native.stop()
