#!/usr/bin/python3
"""benchmarks/netlink.py does what benchmarks/slow_network.py relies on: packets between its two
network namespaces arrive late by the configured delay, a seeded share of them is dropped, and TCP
still delivers every byte. Exits 77 (skipped) where namespaces or TUN devices cannot be made
(not root, or a container without them) and in a chroot."""
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from netlink import TunLink  # noqa: E402

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.2", 9000)); s.listen(); print("ready", flush=True)
c, _ = s.accept(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    n += len(d)
print(n, flush=True)
"""
CLIENT = """
import socket, sys, time
t = time.monotonic(); s = socket.create_connection(("10.77.0.2", 9000), timeout=30)
print(time.monotonic() - t, flush=True)
s.sendall(b"x" * int(sys.argv[1])); s.close()
"""


def transfer(link, size):
    server = subprocess.Popen(link.ns_exec(1) + [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    client = subprocess.run(link.ns_exec(0) + [sys.executable, "-c", CLIENT, str(size)], stdout=subprocess.PIPE,
                            text=True, timeout=120, check=True)
    received = int(server.communicate(timeout=120)[0].strip())
    return float(client.stdout.strip()), received


def main():
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        print("skipped: needs root and /dev/net/tun")
        return 77
    # In a chroot (fresh-machine), `ip netns add` turns the chroot's /run/netns into a mount point
    # that outlives the test and keeps the chroot from being removed.
    if subprocess.run(["ischroot"]).returncode == 0:
        print("skipped: in a chroot, where network namespaces would leave mounts behind")
        return 77
    try:
        probe = TunLink(0.0, 0.0, prefix="fedra-probe")
        probe.close()
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"skipped: cannot make network namespaces or TUN devices here: {e}")
        return 77
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    size = 2 << 20
    with TunLink(0.0, 0.0, prefix="fedra-test") as link:
        rtt, got = transfer(link, size)
        check(got == size and sum(link.stats["dropped"]) == 0, f"clean link: {got} of {size} bytes, no drops")
        check(rtt < 0.04, f"clean link: connect took {rtt * 1000:.1f} ms (< 40, well below the delayed link's 50)")
    with TunLink(0.025, 0.0, prefix="fedra-test") as link:
        rtt, got = transfer(link, size)
        # connect() returns after SYN and SYN-ACK: one round trip, 2 x 25 ms.
        check(0.05 <= rtt < 0.15, f"25 ms each way: connect took {rtt * 1000:.1f} ms (50-150)")
        check(got == size, f"25 ms each way: {got} of {size} bytes")
    with TunLink(0.0, 0.05, seed=3, prefix="fedra-test") as link:
        _, got = transfer(link, size)
        dropped, forwarded = sum(link.stats["dropped"]), sum(link.stats["forwarded"])
        share = dropped / (dropped + forwarded)
        check(got == size, f"5% loss: TCP still delivered {got} of {size} bytes")
        check(0.02 < share < 0.10, f"5% loss: dropped {dropped} of {dropped + forwarded} packets ({share:.1%})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
