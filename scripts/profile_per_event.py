#!/usr/bin/env python3
"""Two `perf record -T` profiles of the durable record workload compared per event.

    scripts/profile_per_event.py BEFORE.data EVENTS_BEFORE AFTER.data EVENTS_AFTER [TOP]

Each profile is cut to the window in which the store's writer thread ran (first to last
sample of `interlude-durab`: the record phase, not the decisions that minted its
impressions), and its samples are divided by the events that phase recorded. Prints samples
per 1,000 events by thread, then the symbols whose share grew most. Used with
scripts/durable_rounds.sh (docs/PERFORMANCE.md, "Durable events as the store grows").
"""
import collections
import subprocess
import sys


def window(data):
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,time,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        rows.append((fields[0], float(fields[1].rstrip(":")), " ".join(fields[3:])[:90]))
    writer = [t for comm, t, _ in rows if comm.startswith("interlude-durab")]
    if not writer:
        sys.exit(f"{data}: no samples of the writer thread")
    lo, hi = min(writer), max(writer)
    return [r for r in rows if lo <= r[1] <= hi]


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    before, after = window(sys.argv[1]), window(sys.argv[3])
    events = float(sys.argv[2]), float(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    threads = [collections.Counter(comm for comm, _, _ in w) for w in (before, after)]
    symbols = [collections.Counter((comm, sym) for comm, _, sym in w) for w in (before, after)]
    per = lambda n, i: 1000 * n / events[i]
    print("samples per 1,000 events, by thread:")
    for comm in sorted(set(threads[0]) | set(threads[1])):
        print(f"  {comm:18} {per(threads[0][comm], 0):6.2f} -> {per(threads[1][comm], 1):6.2f}")
    print(f"  {'all':18} {per(sum(threads[0].values()), 0):6.2f} -> {per(sum(threads[1].values()), 1):6.2f}")
    grown = sorted(((per(symbols[1][k], 1) - per(symbols[0][k], 0), k) for k in set(symbols[0]) | set(symbols[1])),
                   reverse=True)
    for delta, (comm, sym) in grown[:top]:
        print(f"{delta:+6.2f}  {per(symbols[0][(comm, sym)], 0):5.2f} -> {per(symbols[1][(comm, sym)], 1):5.2f}  {comm:15} {sym}")


if __name__ == "__main__":
    main()
