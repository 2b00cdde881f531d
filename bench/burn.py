"""Keeps every core of the machine busy for a given share of the time, in short slices, as a
stream of requests does: the load that bench/run puts beside pgbench's fixed-rate read to
measure the database's own tail with the machine as busy as the server's path made it.

    python3 bench/burn.py SHARE SECONDS    # SHARE: 0.2 adds a fifth of every core

Each core's process steers its own CPU time towards SHARE of the time elapsed, so the share
holds whatever the sleeps overshoot by.
"""
import os
import sys
import time

SLICE = 0.00025  # a quarter of a millisecond, about what one request costs a process


def burn(share, seconds):
    start, cpu0 = time.monotonic(), time.process_time()
    end = start + seconds
    while (now := time.monotonic()) < end:
        if time.process_time() - cpu0 < share * (now - start):
            stop = time.perf_counter() + SLICE
            while time.perf_counter() < stop:
                pass
        else:
            time.sleep(SLICE)


def main():
    share, seconds = float(sys.argv[1]), float(sys.argv[2])
    if share <= 0:
        return
    children = []
    for _ in range(os.cpu_count() or 1):
        pid = os.fork()
        if pid == 0:
            burn(min(share, 1.0), seconds)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
