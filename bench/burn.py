"""Keeps the machine as busy as a given share of all its cores, in short slices, as a stream
of requests does: the load that bench/run puts beside pgbench's fixed-rate reads to measure
the database's own tail with the machine as busy as the server's path made it.

    python3 bench/burn.py SHARE SECONDS    # SHARE: 0.7 keeps the machine 70% busy

One process per core. Each burns quarter-millisecond slices for a share of its own CPU time
(which the kernel counts exactly), and every tenth of a second moves that share by part of
what the machine's busy share since the start, as /proc/stat counts it (the count the
benchmark's own busy figures come from), lacks or exceeds: whatever else runs, the burners
top the machine up to SHARE, and their slices stay short. (/proc/stat moves in steps of 10 ms, so steering
each slice by it directly would burn in bursts of that length on every core at once.)
"""
import os
import sys
import time

SLICE = 0.00025  # a quarter of a millisecond, about what one request costs a process
STEER = 0.1  # seconds between corrections of a process's own share
GAIN = 0.3  # how much of the machine's shortfall (or excess) since the start one correction makes up


def counters():
    """(busy, total) jiffies of the whole machine, busy as bench/run counts it: user, nice,
    system, irq and softirq; total adds idle, iowait and steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy, busy + v[3] + v[4] + v[7]


def burn(share, seconds, start_counts):
    b0, t0 = start_counts
    end = time.monotonic() + seconds
    own = share / 2  # this process's own share of one core, corrected as it goes
    # Its own CPU time is counted over each steering window afresh, so that a correction
    # changes the slices to come rather than making up for the past in one burst.
    window, cpu0 = time.monotonic(), time.process_time()
    while (now := time.monotonic()) < end:
        if now >= window + STEER:
            b, t = counters()
            if t > t0:
                own = min(1.0, max(0.0, own + GAIN * (share - (b - b0) / (t - t0))))
            window, cpu0 = now, time.process_time()
        if time.process_time() - cpu0 < own * (now - window):
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
