#!/usr/bin/env python3
"""Helpers for bench/replica/run.sh.

  replib.py load PID      print "<cpu s> <read_bytes> <rchar>" of the process tree under PID
                          (the primary's postmaster): the postmaster's own counters, which
                          include every child it has reaped (cutime/cstime; the kernel adds a
                          reaped child's I/O counters to its parent's), plus each live
                          descendant's. The difference between two readings is what the
                          primary's processes used in between, including processes that
                          started and ended in between (a walsender, a checkpoint's backend).
                          read_bytes is what reached the block device (page cache misses);
                          rchar every byte returned by read(2) and friends, cache or not.
  replib.py load PID DUMP also writes "pid ticks cmdline" per process of the tree into DUMP.
  replib.py top A B       the processes whose CPU grew most between dumps A and B (new ones in
                          full; the postmaster's line includes what it reaped).
  replib.py report RAW    the tables (medians, each round, ratios) from RAW lines
                          "part metric tool round value".
"""
import os
import statistics
import sys

TICK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # the command name may hold spaces and parentheses: split after the last ')'
    return stat[stat.rindex(b")") + 2:].split()


def proc_io(pid):
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v)
    return out


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def cmd_load(argv):
    root = int(argv[0])
    dump = open(argv[1], "w") if len(argv) > 1 else None
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parent[int(name)] = int(proc_stat(int(name))[1])
            except (OSError, ValueError, IndexError):
                pass
    children = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    cpu = rb = rc = 0
    todo, seen = [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            st = proc_stat(pid)
            io = proc_io(pid)
        except (OSError, ValueError, IndexError):
            continue
        # fields after the command: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
        ticks = int(st[11]) + int(st[12])
        if pid == root:
            ticks += int(st[13]) + int(st[14])
        cpu += ticks
        if dump:
            dump.write(f"{pid} {ticks} {cmdline(pid)}\n")
        rb += io["read_bytes"]
        rc += io["rchar"]
        todo.extend(children.get(pid, []))
    print(f"{cpu / TICK:.2f} {rb} {rc}")


def cmd_top(argv):
    def read(p):
        out = {}
        for line in open(p):
            pid, ticks, cmd = (line.rstrip("\n").split(" ", 2) + [""])[:3]
            out[pid] = (int(ticks), cmd)
        return out
    a, b = read(argv[0]), read(argv[1])
    rows = sorted(((t - a.get(pid, (0, ""))[0], pid, cmd) for pid, (t, cmd) in b.items()), reverse=True)
    print("; ".join(f"{d / TICK:.2f} s {cmd[:60]}" for d, pid, cmd in rows[:4] if d > 0))


def fmt(v):
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


PARTS = {"seed": "(a) seeding a standby, until it streams",
         "rebuild": "(b) rebuilding that standby after ~1 % of its pages changed, until it streams"}
METRICS = [("wall", "wall time (s)", 1),
           ("cpu", "primary CPU (s)", 1),
           ("read", "primary read_bytes, disk (MiB)", 1 << 20),
           ("rchar", "primary rchar, all reads (MiB)", 1 << 20)]
TOOLS = {"seed": ["pgharbor", "pg_basebackup", "pgbackrest"],
         "rebuild": ["pgharbor", "pg_basebackup", "pgbackrest"]}
NAMES = {"seed": {"pgharbor": "pgharbor replica create", "pg_basebackup": "pg_basebackup -R",
                  "pgbackrest": "pgbackrest restore --type=standby"},
         "rebuild": {"pgharbor": "pgharbor replica rebuild", "pg_basebackup": "pg_basebackup -R (fresh)",
                     "pgbackrest": "pgbackrest restore --delta"}}


def cmd_report(argv):
    data = {}
    for line in open(argv[0]):
        if line.startswith("#") or not line.strip():
            continue
        part, metric, tool, _round, value = line.split()
        data.setdefault((part, metric, tool), []).append(float(value))
    for part, title in PARTS.items():
        if not any(k[0] == part for k in data):
            continue
        print(title)
        print(f"{'':34s}" + "".join(f"{NAMES[part][t]:>36s}" for t in TOOLS[part]))
        for metric, label, div in METRICS:
            row = f"{label:34s}"
            for t in TOOLS[part]:
                vals = [v / div for v in data.get((part, metric, t), [])]
                if not vals:
                    row += f"{'-':>36s}"
                    continue
                cell = f"{fmt(statistics.median(vals))} ({' '.join(fmt(v) for v in vals)})"
                row += f"{cell:>36s}"
            print(row)
        for metric, label, _ in METRICS:
            h = data.get((part, metric, "pgharbor"))
            if not h:
                continue
            ratios = []
            for t in TOOLS[part][1:]:
                o = data.get((part, metric, t))
                if o and statistics.median(o) > 0:
                    ratios.append(f"{statistics.median(h) / statistics.median(o):.2f}x {NAMES[part][t]}")
                elif o:
                    ratios.append(f"n/a (zero) {NAMES[part][t]}")
            print(f"  pgharbor {label}: " + ", ".join(ratios))
        print()


if __name__ == "__main__":
    {"load": cmd_load, "top": cmd_top, "report": cmd_report}[sys.argv[1]](sys.argv[2:])
