"""fedra.Worker and its Tasks over the extension's Session (python/src/session.h)."""
import torch  # noqa: F401  (registers torch's types before the extension uses them)

from . import _fedra


class WorkerError(RuntimeError):
    """The worker ended without the job ending well: refused, disconnected, or failed."""


def _args(options):
    """Keyword options as the command line's: connect_timeout=5 -> --connect-timeout 5; a strategy's
    options as given ("fedavg.local_steps") or as a dict (fedavg={"rounds": 3} -> --fedavg.rounds 3);
    True/False -> true/false; None: left out."""
    flat = {}
    for key, value in (options or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    args = []
    for key, value in flat.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        args += ["--" + (key if "." in key else key.replace("_", "-")), str(value)]
    return args


class Task:
    """One task the coordinator asked for: a local training, or an evaluation of the global model.

    kind    "fedavg.fit" (the FedAvg family) or "async.train" (fedasync, fedbuff): train, then reply();
            "fedavg.evaluate" (federated evaluation, fedavg.fed_eval_every > 0, on a worker whose data
            is its own: Fedra evaluates a dataset=... worker's held-out part itself): evaluate task.model
            on your held-out data, then reply_evaluation()
    round   the round (or the update's number)
    model   the global model: an OrderedDict of name -> tensor, in the model's order
    config  what Fedra's loop would do: optimizer, lr, momentum, weight_decay, epochs,
            local_steps (0: no cap), batch_size, proximal_mu, loss, seed; and strategy, model, round
    data    (inputs, targets) of the worker's Fedra dataset when it has one (dataset=...), else None
    """

    def __init__(self, session, raw):
        self._session = session
        self._raw = raw
        self._data = None  # the caller's own (inputs, targets), set by fedra.simulate(data=...)
        self.kind = raw.kind
        self.round = raw.round

    @property
    def model(self):
        return self._raw.model

    @property
    def config(self):
        return self._raw.config

    @property
    def data(self):
        return self._data if self._data is not None else self._raw.data

    def reply(self, state, num_examples, metrics=None):
        """Sends the trained weights (a state dict: every tensor of the model, by name).

        num_examples weighs the update in the average. metrics: "train_loss" (the mean loss of
        local training: the round's train_loss) and "steps", and any figures of your own (numbers;
        names of letters, digits and _): the round's line in metrics.jsonl holds each one's
        example-weighted mean over the round's updates as "fit.NAME", and a Python aggregate sees
        them in each update's "metrics". A wrong reply (a tensor missing or extra, another dtype or
        shape, NaN or Inf, num_examples <= 0, a metric that is not a finite number) raises
        ValueError with the coordinator's words; the task then fails with that reason and the
        worker stays in the job.
        """
        own = dict(metrics or {})
        loss, steps = own.pop("train_loss", 0.0), own.pop("steps", 0)
        try:
            own = {str(k): float(v) for k, v in own.items()}
        except (TypeError, ValueError) as e:
            self.fail(f"a reply's metric is not a number: {e}")
            raise ValueError(f"a reply's metric is not a number: {e}") from None
        self._session.reply(self._raw, state, int(num_examples), float(loss), int(steps), own)

    def reply_evaluation(self, num_examples, loss, correct=0):
        """Sends an evaluation's figures: how many examples, their mean loss, how many predicted right
        (fedra.loops.evaluate computes them as Fedra does). Figures the coordinator would refuse
        (num_examples <= 0, a loss that is not finite, correct outside [0, num_examples]) raise
        ValueError; the task then fails with that reason and the worker stays in the job."""
        self._session.reply_evaluation(self._raw, int(num_examples), float(loss), int(correct))

    def fail(self, reason):
        """Fails this task with `reason` (the coordinator records it); the worker stays in the job."""
        self._session.fail(self._raw, str(reason))


class Worker:
    """A worker whose local training is the caller's loop.

    connect, name and every other option of `fedra worker --help` are keyword arguments (dashes
    as underscores: tls_ca="ca.pem", client="2/4", log_level="warn"). With dataset="fmnist" (a
    Fedra dataset spec) the worker loads and partitions its data as `fedra worker` does and each
    task's .data holds it; without one, the data is the caller's own and num_examples says how
    many examples it trains on (the weight of its updates, which the coordinator learns first).
    """

    def __init__(self, connect, name=None, *, dataset=None, num_examples=0, **options):
        if dataset is None and num_examples <= 0:
            raise ValueError("a Worker needs dataset=SPEC (Fedra loads the data) or num_examples=N > 0 "
                             "(the data is yours; N is how many examples you train on)")
        args = _args(dict(connect=connect, name=name, dataset=dataset, **options))
        self._session = _fedra.Session(args, 0 if dataset is not None else int(num_examples))

    def tasks(self):
        """Yields each Task as the coordinator asks; ends when the job ends.

        Raises WorkerError if the worker ended badly (refused, the connection lost, the job failed).
        """
        while True:
            raw = self._session.next(0.1)  # returns to Python ten times a second: Ctrl-C works
            if raw is not None:
                yield Task(self._session, raw)
            elif self._session.ended:
                break
        code = self._session.exit_code
        if code != 0:
            raise WorkerError(f"the worker ended with code {code}: {self._session.last_error or 'no reason logged'}")

    @property
    def exit_code(self):
        """None while the job runs; then 0 after the coordinator ended it, 1 on an error, 2 if refused."""
        return self._session.exit_code if self._session.ended else None

    def close(self):
        """Fails any task not answered yet; the worker stays connected until the job ends."""
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
