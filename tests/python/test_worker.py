"""Python workers (fedra.Worker) in real FedAvg jobs: a `fedra coordinator` and C++ `fedra worker`
processes over loopback TCP, the Python worker in this process with its own loop."""
import math

import pytest
import torch

import fedra
from conftest import DATA, Job, mlp
from fedra.loops import sgd as fedra_sgd

MODEL = "mlp:784-32-10"
FEDAVG = ["--model", MODEL, "--test-data", DATA, "--min-workers", "2", "--fedavg.rounds", "3",
          "--fedavg.local_epochs", "1", "--seed", "7"]


def serve(worker, train):
    """Answers every task with `train(model, task)` -> (loss, steps); returns the rounds served."""
    model = mlp(784, 32, 10)
    rounds = []
    for task in worker.tasks():
        model.load_state_dict(task.model)
        loss, steps = train(model, task)
        task.reply(model.state_dict(), num_examples=task.data[0].shape[0] if task.data else 1000,
                   metrics={"train_loss": loss, "steps": steps})
        rounds.append(task.round)
    return rounds


def test_a_python_worker_and_a_cpp_worker_train_one_fedavg_job(job_dir):
    job = Job(job_dir, FEDAVG)
    job.cpp_worker("cpp-0", ["--dataset", DATA, "--client", "0/2"])

    def own_loop(model, task):  # not Fedra's: AdamW, clipping, its own batch order
        x, y = task.data
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for idx in torch.randperm(x.shape[0]).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        return sum(losses) / len(losses), len(losses)

    worker = fedra.Worker(connect=job.address, name="py-1", dataset=DATA, client="1/2")
    model = mlp(784, 32, 10)
    for task in worker.tasks():  # a figure of its own beside train_loss: the round's line shows it
        model.load_state_dict(task.model)
        loss, steps = own_loop(model, task)
        task.reply(model.state_dict(), num_examples=task.data[0].shape[0],
                   metrics={"train_loss": loss, "steps": steps, "last_round_seen": task.round * 10})
    assert worker.exit_code == 0
    assert job.finish() == 0, job.coordinator_log()
    lines = job.metrics()
    assert [l["round"] for l in lines] == [1, 2, 3]
    assert all(l["status"] == "ok" and l["workers_ok"] == 2 for l in lines)
    assert lines[-1]["test_accuracy"] > 0.6
    # only the Python worker sent it, so its mean over the senders is its value
    assert [l["fit.last_round_seen"] for l in lines] == [10, 20, 30]


def test_a_python_loop_that_is_fedras_sgd_gives_the_cpp_workers_model(job_dir):
    cpp = Job(job_dir / "cpp", FEDAVG)
    for i in range(2):
        cpp.cpp_worker(f"w-{i}", ["--dataset", DATA, "--client", f"{i}/2"])
    assert cpp.finish() == 0, cpp.coordinator_log()

    mixed = Job(job_dir / "mixed", FEDAVG)
    mixed.cpp_worker("w-0", ["--dataset", DATA, "--client", "0/2"])
    worker = fedra.Worker(connect=mixed.address, name="w-1", dataset=DATA, client="1/2")
    assert serve(worker, fedra_sgd) == [1, 2, 3]
    assert mixed.finish() == 0, mixed.coordinator_log()

    want, got = cpp.model(), mixed.model()
    assert list(want) == list(got)
    worst = max((want[k] - got[k]).abs().max().item() for k in want)
    print(f"largest difference from the all-C++ job's model: {worst:.3g}")
    assert worst <= 1e-5
    for a, b in zip(cpp.metrics(), mixed.metrics()):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-5)


def test_each_wrong_reply_raises_with_the_reason_and_the_job_goes_on(job_dir):
    job = Job(job_dir, ["--model", MODEL, "--test-data", DATA, "--min-workers", "2", "--fedavg.rounds", "8",
                        "--fedavg.local_steps", "5", "--fedavg.min_results", "1"])
    job.cpp_worker("cpp-0", ["--dataset", DATA, "--client", "0/2"])
    worker = fedra.Worker(connect=job.address, name="py-1", num_examples=500)
    model = mlp(784, 32, 10)

    def missing(s):
        del s["fc2.bias"]

    def extra(s):
        s["fc3.weight"] = torch.zeros(1)

    def nan(s):
        s["fc1.weight"][0, 0] = float("nan")

    def shape(s):
        s["fc1.bias"] = torch.zeros(31)

    def dtype(s):
        s["fc2.weight"] = s["fc2.weight"].double()

    def keep(s):
        pass

    wrongs = [(missing, {}, "the reply lacks tensor 'fc2.bias'"),
              (extra, {}, "the reply has tensor 'fc3.weight', which the job's model 'mlp:784-32-10' does not have"),
              (nan, {}, "update tensor 'fc1.weight' holds NaN or infinite values"),
              (shape, {}, "update tensor 'fc1.bias' is float32[31], the model's is float32[32]"),
              (dtype, {}, "update tensor 'fc2.weight' is float64"),
              (keep, {"accuracy": float("inf")}, "the reply's metric 'accuracy' is inf; it must be finite")]
    said = []
    for task in worker.tasks():
        model.load_state_dict(task.model)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if task.round <= len(wrongs):
            spoil, figures, words = wrongs[task.round - 1]
            spoil(state)
            with pytest.raises(ValueError) as refused:
                task.reply(state, num_examples=500, metrics={"train_loss": 0.5, **figures})
            assert words in str(refused.value)
            said.append(str(refused.value))
        elif task.round == len(wrongs) + 1:
            with pytest.raises(ValueError, match="num_examples is 0; it must be > 0"):
                task.reply(state, num_examples=0)
            with pytest.raises(ValueError, match="already failed"):  # a failed task stays failed
                task.reply(state, num_examples=500)
        else:
            task.reply(state, num_examples=500, metrics={"train_loss": 0.5})
    assert job.finish() == 0, job.coordinator_log()
    log = job.coordinator_log()
    for text in said:
        assert text in log  # the coordinator recorded each worker's reason
    lines = job.metrics()
    assert len(lines) == 8 and all(l["status"] == "ok" for l in lines)
    assert [l["workers_ok"] for l in lines] == [1, 1, 1, 1, 1, 1, 1, 2]  # back in the job once it replies well


def three_worker_models(job_dir, name, cpp_args, mixed_args):
    """The final model of a job of three C++ workers with `cpp_args`, and of the same job with
    `mixed_args` where worker w-2 is a Python worker running Fedra's SGD (the C++ worker's stages
    around it: DP's clipping and noise, secure aggregation's masking)."""
    base = ["--model", MODEL, "--test-data", DATA, "--min-workers", "3", "--fedavg.rounds", "2",
            "--fedavg.local_steps", "10", "--seed", "3"]
    data = "fmnist:limit=1500,test_limit=500"
    cpp = Job(job_dir / (name + "-cpp"), base + cpp_args)
    for i in range(3):
        cpp.cpp_worker(f"w-{i}", ["--dataset", data, "--client", f"{i}/3"])
    assert cpp.finish() == 0, cpp.coordinator_log()
    mixed = Job(job_dir / (name + "-mixed"), base + mixed_args)
    for i in range(2):
        mixed.cpp_worker(f"w-{i}", ["--dataset", data, "--client", f"{i}/3"])
    worker = fedra.Worker(connect=mixed.address, name="w-2", dataset=data, client="2/3", log_level="warn")
    assert serve(worker, fedra_sgd) == [1, 2]
    assert mixed.finish() == 0, mixed.coordinator_log()
    want, got = cpp.model(), mixed.model()
    worst = max((want[k] - got[k]).abs().max().item() for k in want)
    print(f"{name}: largest difference from the all-C++ job's model {worst:.3g}")
    return worst, mixed


def test_client_dp_with_a_python_worker_gives_what_cpp_workers_give(job_dir):
    dp = ["--fedavg.dp", "client", "--fedavg.dp_clip", "0.5", "--fedavg.dp_noise", "0.8", "--fedavg.dp_seed", "11"]
    worst, mixed = three_worker_models(job_dir, "dp", dp, dp)
    assert worst <= 1e-5
    assert mixed.metrics()[-1]["dp_epsilon"] > 0  # the noise was added and accounted
    # and the privacy spent is on the progress line, beside the scores
    assert f"dp_epsilon {mixed.metrics()[-1]['dp_epsilon']:.4f}" in mixed.coordinator_log()


def test_secure_aggregation_with_a_python_worker_gives_the_plain_mean(job_dir):
    worst, mixed = three_worker_models(job_dir, "secagg", [], ["--fedavg.secagg", "true"])
    assert worst <= 1e-5
    assert all(l["workers_ok"] == 3 for l in mixed.metrics())


def test_federated_evaluation_on_a_python_workers_own_data(job_dir):
    """fedavg.fed_eval_every 1: the C++ worker evaluates its held-out part in Fedra, the Python worker
    (no held-out part) gets fedavg.evaluate tasks and answers them in its own code; a wrong answer
    raises with the reason and that round's evaluation goes on without it."""
    job = Job(job_dir, ["--model", MODEL, "--test-data", DATA, "--min-workers", "2", "--fedavg.rounds", "3",
                        "--fedavg.local_steps", "5", "--fedavg.fed_eval_every", "1", "--seed", "3"])
    job.cpp_worker("cpp-0", ["--dataset", DATA, "--client", "0/2", "--holdout", "0.2"])
    worker = fedra.Worker(connect=job.address, name="py-1", dataset=DATA, client="1/2")
    model = mlp(784, 32, 10)
    answered = None
    for task in worker.tasks():
        model.load_state_dict(task.model)
        if task.kind == "fedavg.fit":
            loss, steps = fedra_sgd(model, task)
            task.reply(model.state_dict(), num_examples=task.data[0].shape[0], metrics={"train_loss": loss})
            continue
        assert task.kind == "fedavg.evaluate" and task.config["loss"] == "ce"
        x, y = task.data  # the worker's training part: this test evaluates on 200 of its examples
        n, loss, correct = fedra.loops.evaluate(model, task, (x[:200], y[:200]))
        if task.round == 1:
            with pytest.raises(ValueError, match=r"correct is 201: it must be in \[0, num_examples = 200\]"):
                task.reply_evaluation(n, loss, 201)
            with pytest.raises(ValueError, match="already failed"):  # a failed task stays failed
                task.reply_evaluation(n, loss, correct)
        elif task.round == 2:
            with pytest.raises(ValueError, match="this is an evaluation task"):
                task.reply(model.state_dict(), num_examples=200)
        else:
            task.reply_evaluation(n, loss, correct)
            answered = (n, loss, correct)
    assert job.finish() == 0, job.coordinator_log()
    lines = job.metrics()
    assert [l["fed_eval_workers_ok"] for l in lines] == [1, 1, 2]
    assert [l["fed_eval_workers_failed"] for l in lines] == [1, 1, 0]
    assert "correct is 201" in job.coordinator_log()
    last = lines[-1]
    assert last["fed_eval_workers"] == "cpp-0,py-1"
    cpp_n = last["fed_eval_examples"] - 200
    assert cpp_n > 0 and last["fed_eval_weights"][1] == pytest.approx(200 / last["fed_eval_examples"])
    assert "fed_eval_class_accuracy" not in last  # the Python worker sent no class counts
    # the C++ worker's figures, from the round's totals less the Python worker's
    cpp_loss = (last["fed_eval_loss"] * last["fed_eval_examples"] - answered[1] * 200) / cpp_n
    assert 0 < cpp_loss < 3


def test_client_auto_places_a_python_worker_from_the_schedulers_environment(job_dir, monkeypatch):
    """client="auto" reads Slurm's or torchrun's variables as `fedra worker --client auto` does (the
    same code): this worker becomes client 1 of 2 and is named worker-1."""
    for var in ("SLURM_PROCID", "SLURM_NTASKS", "RANK", "WORLD_SIZE", "JOB_COMPLETION_INDEX", "MASTER_ADDR",
                "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="--client auto found no scheduler placement"):
        fedra.Worker(connect="127.0.0.1:1", dataset=DATA, client="auto")
    job = Job(job_dir, ["--model", MODEL, "--test-data", DATA, "--min-workers", "2", "--fedavg.rounds", "1",
                        "--fedavg.local_steps", "2"])
    job.cpp_worker("worker-0", ["--dataset", DATA, "--client", "0/2"])
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    worker = fedra.Worker(connect=job.address, dataset=DATA, client="auto")
    assert serve(worker, fedra_sgd) == [1]
    assert job.finish() == 0, job.coordinator_log()
    log = job.coordinator_log()
    assert "worker worker-1 joined" in log and "(1000 examples" in log
