#!/usr/bin/env python3
"""Helpers for bench/backup/run.sh.

  benchlib.py run LOG -- CMD...   run CMD (stdout+stderr appended to LOG); print
                                  "<wall s> <peak RSS MiB> <peak tree RSS MiB> <exit code>":
                                  peak RSS is ru_maxrss from wait4 (the largest single process of
                                  the tree: CMD and the children it waited for), peak tree RSS the
                                  largest sum of RSS over CMD and all its descendants, sampled
                                  every 20 ms.
  benchlib.py gencopy MB          COPY BINARY stream of MB rows (id int, b bytea) of 1 MiB of
                                  os.urandom each, on stdout.
  benchlib.py evict DIR...        drop the files below DIR from the page cache (posix_fadvise
                                  DONTNEED after fsync), so the next read comes from disk.
  benchlib.py report RAW          the table (medians, min, max, ratios, targets) from RAW lines
                                  "metric tool round value".
"""
import os
import statistics
import struct
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root):
    """Sum of RSS (bytes) over root and its descendants."""
    parent = {}
    rss = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            # the command name may hold spaces and parentheses: split after the last ')'
            fields = stat[stat.rindex(b")") + 2:].split()
            parent[pid] = int(fields[1])
            rss[pid] = int(fields[21]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    total, todo, seen = 0, [root], set()
    children = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def cmd_run(argv):
    log = argv[0]
    assert argv[1] == "--", "usage: run LOG -- CMD..."
    cmd = argv[2:]
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            try:
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        peak_tree = 0
        while True:
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                break
            peak_tree = max(peak_tree, tree_rss(pid))
            time.sleep(0.02)
        wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    maxrss_mib = ru.ru_maxrss / 1024.0  # KiB on Linux
    peak_tree = max(peak_tree / 1048576.0, maxrss_mib)
    print(f"{wall:.3f} {maxrss_mib:.1f} {peak_tree:.1f} {code}")


def cmd_gencopy(argv):
    n = int(argv[0])
    out = sys.stdout.buffer
    out.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
    size = 1 << 20
    for i in range(1, n + 1):
        out.write(struct.pack("!hii", 2, 4, i) + struct.pack("!i", size))
        out.write(os.urandom(size))
    out.write(struct.pack("!h", -1))
    out.flush()


TOOLS = ["pgharbor", "pgbr_enc", "pgbr_plain", "pg_basebackup"]
# backups also by pgharbor --method stream (BASE_BACKUP), for comparison with its default
BACKUP_TOOLS = ["pgharbor", "pgharbor_stream", "pgbr_enc", "pgbr_plain", "pg_basebackup"]
WAL_TOOLS = ["pgharbor", "pgbr_async", "pgbr_sync"]
NAMES = {
    "pgharbor": "pgharbor (age+zstd3)",
    "pgharbor_stream": "pgharbor --method stream",
    "pgbr_enc": "pgBackRest aes+zst3",
    "pgbr_plain": "pgBackRest zst3",
    "pg_basebackup": "pg_basebackup zstd3",
    "pgbr_async": "pgBackRest async (aes+zst3)",
    "pgbr_sync": "pgBackRest sync (aes+zst3)",
}
# metric: (title, unit, tools, ratio denominators, target text, target check on the medians)
METRICS = [
    ("backup_s", "full backup wall time", "s", BACKUP_TOOLS, ["pgbr_enc", "pgbr_plain", "pg_basebackup"],
     "pgharbor <= 0.6x pgBackRest aes", lambda m: m["pgharbor"] <= 0.6 * m["pgbr_enc"]),
    ("backup_rss", "full backup peak RSS, largest process", "MiB", BACKUP_TOOLS, ["pgbr_enc", "pgbr_plain", "pg_basebackup"],
     "pgharbor <= 128 MiB", lambda m: m["pgharbor"] <= 128),
    ("backup_tree", "full backup peak RSS, sum over process tree", "MiB", BACKUP_TOOLS, ["pgbr_enc", "pgbr_plain", "pg_basebackup"],
     None, None),
    ("backup_stored", "full backup stored size", "MB", BACKUP_TOOLS, ["pgbr_enc", "pgbr_plain", "pg_basebackup"], None, None),
    ("restore_s", "full restore wall time (tool exits)", "s", TOOLS, ["pgbr_enc", "pgbr_plain", "pg_basebackup"],
     "pgharbor <= 0.8x pgBackRest aes", lambda m: m["pgharbor"] <= 0.8 * m["pgbr_enc"]),
    ("restore_sync_s", "full restore wall time + sync(1) after it", "s", TOOLS, ["pgbr_enc", "pgbr_plain", "pg_basebackup"],
     "pgharbor <= 0.8x pgBackRest aes", lambda m: m["pgharbor"] <= 0.8 * m["pgbr_enc"]),
    ("restore_rss", "full restore peak RSS, largest process", "MiB", TOOLS, ["pgbr_enc", "pgbr_plain", "pg_basebackup"],
     None, None),
    ("restore_tree", "full restore peak RSS, sum over process tree", "MiB", TOOLS, ["pgbr_enc", "pgbr_plain", "pg_basebackup"],
     None, None),
    ("wal_catchup_s", "WAL archiving: end of load -> archiver caught up", "s", WAL_TOOLS, ["pgbr_async", "pgbr_sync"],
     "pgharbor <= 1 s", lambda m: m["pgharbor"] <= 1.0),
    ("wal_pending", "WAL archiving: .ready segments at end of load", "segs", WAL_TOOLS, [], None, None),
    ("wal_load_s", "WAL archiving: bulk load duration", "s", WAL_TOOLS, [], None, None),
    ("wal_mb", "WAL archiving: WAL written by the load", "MB", WAL_TOOLS, [], None, None),
]


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cmd_report(argv):
    data = {}
    fails = {}
    with open(argv[0]) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4 or parts[0].startswith("#"):
                continue
            metric, tool, _rnd, value = parts
            if value == "FAIL":
                fails.setdefault((metric, tool), 0)
                fails[(metric, tool)] += 1
                continue
            data.setdefault((metric, tool), []).append(float(value))
    out = []
    verdicts = []
    for metric, title, unit, tools, denoms, target, check in METRICS:
        present = [t for t in tools if (metric, t) in data or (metric, t) in fails]
        if not present:
            continue
        out.append(f"\n{title} [{unit}]")
        out.append(f"  {'':30} {'median':>8} {'min':>8} {'max':>8} {'n':>3}")
        med = {}
        for t in present:
            vals = data.get((metric, t), [])
            nf = fails.get((metric, t), 0)
            if vals:
                med[t] = statistics.median(vals)
                line = f"  {NAMES[t]:30} {fmt(med[t]):>8} {fmt(min(vals)):>8} {fmt(max(vals)):>8} {len(vals):>3}"
            else:
                line = f"  {NAMES[t]:30} {'-':>8} {'-':>8} {'-':>8} {0:>3}"
            if nf:
                line += f"  ({nf} failed)"
            out.append(line)
        for h in ("pgharbor", "pgharbor_stream"):
            if h not in med:
                continue
            for d in denoms:
                if d in med and med[d] > 0:
                    ratio = med[h] / med[d]
                    # ratio range from the extremes: best and worst pairing over rounds
                    hv, dv = data[(metric, h)], data[(metric, d)]
                    lo = min(hv) / max(dv) if max(dv) > 0 else None
                    hi = max(hv) / min(dv) if min(dv) > 0 else None
                    out.append(f"  ratio {NAMES[h]:24} / {NAMES[d]:21} {ratio:8.2f}x  (extremes {fmt(lo)}..{fmt(hi)})")
        if target:
            try:
                ok = check(med)
                v = "MET" if ok else "MISSED"
            except KeyError:
                v = "n/a"
            out.append(f"  target: {target}  -> {v}")
            verdicts.append(f"  {title}: {target} -> {v}")
    print("\n".join(out))
    if verdicts:
        print("\nTargets (issue 3), on the medians:")
        print("\n".join(verdicts))


def cmd_evict(argv):
    for top in argv:
        for root, _, files in os.walk(top):
            for name in files:
                p = os.path.join(root, name)
                if os.path.islink(p):
                    continue
                try:
                    fd = os.open(p, os.O_RDONLY)
                except OSError:
                    continue  # a temporary file gone meanwhile
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


if __name__ == "__main__":
    cmds = {"run": cmd_run, "gencopy": cmd_gencopy, "report": cmd_report, "evict": cmd_evict}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmds[sys.argv[1]](sys.argv[2:])
