#!/usr/bin/python3
"""A FedAvg job across three hosts: the coordinator and two workers each in a network namespace of
its own, with its own address on a bridged LAN (veth pairs into a fourth namespace holding the
bridge), over mutual TLS. Nothing shares 127.0.0.1: the coordinator listens on all interfaces and
workers reach it by its LAN address, one through the torchrun convention (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), one through the address file the coordinator writes
(--address-file, --advertise). The same job then runs on loopback with --client I/N; both must
report the same metrics.

Namespaces are held by `unshare --net` processes (no /run/netns mounts), so the test leaves nothing
behind. Exits 77 (skipped) where it cannot make namespaces, veth pairs or a bridge (not root, or a
container without them).

usage: multihost_test.py FEDRA_BINARY WORK_DIR"""
import json
import os
import shutil
import subprocess
import sys
import time

from deploylib import Checks, round_metrics, wait_for_port

FEDRA = os.path.abspath(sys.argv[1])
WORK = os.path.abspath(sys.argv[2])
LAN = "10.79.0"
PORT = 7443
# Small and quick, but a real run: two rounds of FedAvg on Fashion-MNIST.
JOB = ["--strategy", "fedavg", "--model", "mlp:784-64-10", "--seed", "7", "--test-data", "fmnist:limit=3000",
       "--fedavg.rounds", "2", "--fedavg.local_epochs", "1", "--fedavg.lr", "0.05", "--min-workers", "2",
       "--wait-timeout", "60"]
WORKER_DATA = ["--dataset", "fmnist:limit=3000", "--seed", "7", "--threads", "1"]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


class Namespace:
    """A network namespace held open by a sleeping process."""

    def __init__(self):
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
        path = f"/proc/{self.holder.pid}/ns/net"
        for _ in range(100):  # until unshare has exec'd sleep inside the new namespace
            if os.path.exists(path) and os.readlink(path) != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.02)
        else:
            raise OSError("unshare --net did not make a namespace")
        self.pid = self.holder.pid

    def exec(self, cmd):
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--"] + cmd

    def ip(self, *args):
        run(self.exec(["ip"] + list(args)))

    def close(self):
        self.holder.kill()
        self.holder.wait()


class Lan:
    """Hosts on one bridged LAN: host i has address 10.79.0.(i+1)/24 on eth0."""

    def __init__(self, hosts):
        self.switch = Namespace()
        self.hosts = []
        tag = os.getpid() % 100000
        try:
            self.switch.ip("link", "add", "br0", "type", "bridge")
            self.switch.ip("link", "set", "br0", "up")
            for i in range(hosts):
                ns = Namespace()
                self.hosts.append(ns)
                inner, outer = f"fh{tag}x{i}", f"fs{tag}x{i}"
                run(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer])
                run(["ip", "link", "set", inner, "netns", str(ns.pid)])
                run(["ip", "link", "set", outer, "netns", str(self.switch.pid)])
                self.switch.ip("link", "set", outer, "master", "br0")
                self.switch.ip("link", "set", outer, "up")
                ns.ip("link", "set", inner, "name", "eth0")
                ns.ip("addr", "add", f"{LAN}.{i + 1}/24", "dev", "eth0")
                ns.ip("link", "set", "eth0", "up")
                ns.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def close(self):
        for ns in self.hosts + [self.switch]:
            ns.close()  # the veth pairs and the bridge go with their namespaces


def wait_all(procs, timeout):
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def main():
    if os.geteuid() != 0:
        print("skipped: network namespaces need root")
        return 77
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            print(f"skipped: {tool} is not installed (util-linux, iproute2)")
            return 77
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    try:
        lan = Lan(3)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = e.stdout.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        print(f"skipped: cannot make namespaces, veth pairs or a bridge here: {detail}")
        return 77
    check = Checks()
    certs = os.path.join(WORK, "certs")
    run([FEDRA, "certs", "--out", certs, "--hosts", f"{LAN}.1,127.0.0.1", "--workers", "2"])
    tls_c = ["--tls-cert", f"{certs}/coordinator.pem", "--tls-key", f"{certs}/coordinator.key", "--tls-ca",
             f"{certs}/ca.pem"]
    tls_w = ["--tls-ca", f"{certs}/ca.pem", "--tls-cert", f"{certs}/worker-{{client}}.pem", "--tls-key",
             f"{certs}/worker-{{client}}.key"]
    coord_ns, w0_ns, w1_ns = lan.hosts
    try:
        # --- three hosts ----------------------------------------------------------------------
        out = os.path.join(WORK, "lan")
        addr_file = os.path.join(WORK, "coordinator.addr")
        logs = {n: open(os.path.join(WORK, f"lan-{n}.log"), "w") for n in ("coordinator", "worker-0", "worker-1")}
        coordinator = subprocess.Popen(
            coord_ns.exec([FEDRA, "coordinator", *JOB, *tls_c, "--listen", f"0.0.0.0:{PORT}", "--advertise", f"{LAN}.1",
                           "--address-file", addr_file, "--out", out]),
            stdout=logs["coordinator"], stderr=subprocess.STDOUT)
        env0 = dict(os.environ, RANK="0", WORLD_SIZE="2", MASTER_ADDR=f"{LAN}.1", MASTER_PORT=str(PORT))
        w0 = subprocess.Popen(w0_ns.exec([FEDRA, "worker", *WORKER_DATA, *tls_w, "--client", "auto"]), env=env0,
                              stdout=logs["worker-0"], stderr=subprocess.STDOUT)
        env1 = dict(os.environ, JOB_COMPLETION_INDEX="1")
        w1 = subprocess.Popen(w1_ns.exec([FEDRA, "worker", *WORKER_DATA, *tls_w, "--client", "auto/2", "--connect",
                                          f"file:{addr_file}"]), env=env1,
                              stdout=logs["worker-1"], stderr=subprocess.STDOUT)
        codes = wait_all([coordinator, w0, w1], 240)
        for f in logs.values():
            f.close()
        text = {n: open(os.path.join(WORK, f"lan-{n}.log")).read() for n in logs}
        check(codes == [0, 0, 0], f"three hosts: coordinator and both workers exit 0 (got {codes})")
        check(open(addr_file).read().strip() == f"{LAN}.1:{PORT}", "--address-file holds the advertised HOST:PORT")
        check("placement: client 0/2 from RANK=0, WORLD_SIZE=2 (torchrun/PyTorchJob); coordinator "
              f"{LAN}.1:{PORT} from MASTER_ADDR, MASTER_PORT" in text["worker-0"],
              "worker 0 found its rank and the coordinator in RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT")
        check("placement: client 1/2 from JOB_COMPLETION_INDEX=1 (Kubernetes Indexed Job), --client auto/2"
              in text["worker-1"], "worker 1 found its index in JOB_COMPLETION_INDEX")
        check(f"{LAN}.2" in text["coordinator"] and f"{LAN}.3" in text["coordinator"],
              "the coordinator saw the workers arrive from their own addresses (.2, .3)")
        check("TLS, mutual" in text["coordinator"] and all(
            f"CN = worker-{i}'" in text["coordinator"] for i in range(2)),
              "mutual TLS, each worker with its own certificate (worker-{client}.pem)")
        lan_rounds = round_metrics(out)
        summary = json.load(open(os.path.join(out, "summary.json")))
        check(summary.get("status") == "completed" and len(lan_rounds) == 2, "three hosts: 2 rounds, completed")

        # --- the same job on loopback -----------------------------------------------------------
        out_lo = os.path.join(WORK, "loopback")
        port_file = os.path.join(WORK, "loopback.port")
        with open(os.path.join(WORK, "loopback.log"), "w") as log:
            coordinator = subprocess.Popen([FEDRA, "coordinator", *JOB, *tls_c, "--listen", "127.0.0.1:0", "--port-file",
                                            port_file, "--out", out_lo], stdout=log, stderr=subprocess.STDOUT)
            port = wait_for_port(port_file, coordinator)
            workers = [subprocess.Popen([FEDRA, "worker", *WORKER_DATA, *tls_w, "--client", f"{i}/2", "--name",
                                         f"worker-{i}", "--connect", f"127.0.0.1:{port}"], stdout=log,
                                        stderr=subprocess.STDOUT) for i in range(2)]
            codes = wait_all([coordinator] + workers, 240)
        check(codes == [0, 0, 0], f"loopback: all exit 0 (got {codes})")
        lo_rounds = round_metrics(out_lo)
        for a, b in zip(lan_rounds, lo_rounds):
            print(f"     round {a['round']}: three hosts accuracy {a['test_accuracy']:.4f} loss {a['test_loss']:.6f}"
                  f" | loopback {b['test_accuracy']:.4f} {b['test_loss']:.6f}")
        same = len(lan_rounds) == len(lo_rounds) == 2 and all(
            a["test_accuracy"] == b["test_accuracy"] and abs(a["test_loss"] - b["test_loss"]) <= 1e-6
            for a, b in zip(lan_rounds, lo_rounds))
        check(same, "three hosts and loopback report the same accuracy and loss every round")
        check(lan_rounds and lan_rounds[-1]["test_accuracy"] > 0.5, "the model learned (accuracy > 0.5)")
    finally:
        lan.close()
    return check.result(WORK)


if __name__ == "__main__":
    sys.exit(main())
