"""Keeps the machine as busy as a given share of all its cores, in short slices, as a stream
of requests does: the load that bench/run puts beside pgbench's fixed-rate reads to measure
the database's own tail with the machine as busy as the server's path made it.

    python3 bench/burn.py SHARE SECONDS    # SHARE: 0.7 keeps the machine 70% busy

One process per core. Each burns a slice whenever the machine's busy share since the start,
as /proc/stat counts it (the count the benchmark's own busy figures come from), is below
SHARE, and sleeps a slice otherwise: whatever else runs, the burners top the machine up to
SHARE and no further.
"""
import os
import sys
import time

SLICE = 0.00025  # a quarter of a millisecond, about what one request costs a process


def counters():
    """(busy, total) jiffies of the whole machine, busy as bench/run counts it: user, nice,
    system, irq and softirq; total adds idle, iowait and steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy, busy + v[3] + v[4] + v[7]


def burn(share, seconds, start_counts):
    end = time.monotonic() + seconds
    b0, t0 = start_counts
    while time.monotonic() < end:
        b, t = counters()
        if t == t0 or (b - b0) < share * (t - t0):
            stop = time.perf_counter() + SLICE
            while time.perf_counter() < stop:
                pass
        else:
            time.sleep(SLICE)


def main():
    share, seconds = float(sys.argv[1]), float(sys.argv[2])
    if share <= 0:
        return
    start_counts = counters()
    children = []
    for _ in range(os.cpu_count() or 1):
        pid = os.fork()
        if pid == 0:
            burn(min(share, 1.0), seconds, start_counts)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
