"""A lossy, slow link between two network namespaces, made in user space (netem's delay and loss).

This machine's kernel has no sch_netem, so `tc qdisc add ... netem delay 25ms loss 1%` is not
available. TunLink builds the same thing one layer up from the qdisc: two network namespaces,
each with a TUN device, and this process carrying IP packets between the two devices. Every
packet is held `delay` seconds (in order) and dropped with probability `loss`, independently in
each direction, with a seeded generator. The kernel's TCP on both sides sees real delay and real
packet loss and reacts as it would to netem: retransmissions, congestion window cuts.

Needs root (ip netns, /dev/net/tun). Addresses: the first namespace is 10.77.0.1, the second
10.77.0.2; each has its own loopback. `ns_exec(i)` is the command prefix to run a program there.
"""
import collections
import fcntl
import os
import random
import struct
import subprocess
import sys
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


class TunLink:
    ADDRESSES = ("10.77.0.1", "10.77.0.2")

    def __init__(self, delay, loss, seed=1, prefix="fedra-link", mtu=1500):
        if os.geteuid() != 0:
            raise SystemExit("this needs root: it creates network namespaces and TUN devices")
        self.delay, self.loss = delay, loss
        self.names = (f"{prefix}-a", f"{prefix}-b")
        self.stats = {"forwarded": [0, 0], "dropped": [0, 0]}
        self._stop = False
        self.fds = []
        try:
            self._build(mtu)
        except BaseException:
            self.close()  # no namespace outlives a failed start (it would pin a mount)
            raise
        # Four forwarding threads share the GIL; at the default 5 ms switch interval a packet
        # could wait that long for its turn (measured: a 9.6 ms connect on the clean link).
        sys.setswitchinterval(0.0002)
        rng = random.Random(seed)
        for direction in (0, 1):
            queue = collections.deque()
            cond = threading.Condition()
            sub_rng = random.Random(rng.random())
            threading.Thread(target=self._read, args=(direction, queue, cond, sub_rng), daemon=True).start()
            threading.Thread(target=self._write, args=(direction, queue, cond), daemon=True).start()

    def _build(self, mtu):
        for ns in self.names:
            _ip("netns", "del", ns, check=False)
            _ip("netns", "add", ns)
        for i, ns in enumerate(self.names):
            dev = f"fl{os.getpid() % 10000}{i}"
            fd = os.open("/dev/net/tun", os.O_RDWR)
            self.fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", self.ADDRESSES[i], "peer", self.ADDRESSES[1 - i], "dev", dev)
            _ip("-n", ns, "link", "set", dev, "mtu", str(mtu), "up")

    def ns_exec(self, i):
        return ["ip", "netns", "exec", self.names[i]]

    def _read(self, direction, queue, cond, rng):
        src = self.fds[direction]
        while not self._stop:
            try:
                packet = os.read(src, 65536)
            except OSError:
                return
            if self.loss > 0 and rng.random() < self.loss:
                self.stats["dropped"][direction] += 1
                continue
            with cond:
                queue.append((time.monotonic() + self.delay, packet))
                cond.notify()

    def _write(self, direction, queue, cond):
        dst = self.fds[1 - direction]
        while not self._stop:
            with cond:
                while not queue and not self._stop:
                    cond.wait(0.5)
                if self._stop:
                    return
                due, packet = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                os.write(dst, packet)
                self.stats["forwarded"][direction] += 1
            except OSError:
                pass

    def close(self):
        self._stop = True
        for ns in self.names:
            _ip("netns", "del", ns, check=False)
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
