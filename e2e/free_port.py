"""Prints a loopback TCP port that was free a moment ago, chosen below the kernel's ephemeral range.

Why not bind port 0: the kernel hands out ports from the ephemeral range, the same range it takes the
source ports of outgoing connections from. A test that opens hundreds of connections can take the port
we just probed as a source port before the tool we start binds it, and the tool fails with
EADDRINUSE. Ports below the range are never given to outgoing connections.
"""

import os
import random
import socket


def ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def main():
    low = max(ephemeral_low(), 11000)
    rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(8), "little"))
    for _ in range(1000):
        port = rng.randrange(10000, low)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        print(port)
        return
    raise SystemExit("no free loopback port below the ephemeral range")


main()
