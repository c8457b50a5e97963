#!/usr/bin/env python3
"""Helpers for bench/backup/run.sh.

  benchlib.py run LOG -- CMD...   run CMD (stdout+stderr appended to LOG); print
                                  "<wall s> <peak RSS MiB> <peak tree RSS MiB> <CPU s>
                                  <read bytes> <exit code> <peak tree RssAnon MiB>":
                                  peak RSS is ru_maxrss from wait4 (the largest single process of
                                  the tree: CMD and the children it waited for), peak tree RSS the
                                  largest sum of RSS over CMD and all its descendants, sampled
                                  every 20 ms, and peak tree RssAnon the same sum of private
                                  memory only (RSS also counts the tool's executable pages, which
                                  depend on the page cache, see tree_rss). CPU s is user + system time of CMD and the
                                  descendants it waited for (wait4); read bytes is what they
                                  fetched from storage (read_bytes of /proc/PID/io: the kernel
                                  adds a reaped child's counters to its parent's, so this
                                  process's own counters before and after CMD give the tree's).
  benchlib.py gencopy MB          COPY BINARY stream of MB rows (id int, b bytea) of 1 MiB of
                                  os.urandom each, on stdout.
  benchlib.py geninline MB RND TXT  COPY BINARY stream of rows (id int, b bytea, t text): RND
                                  bytes of os.urandom and TXT bytes of compressible words per
                                  row, MB MiB in all, on stdout.
  benchlib.py treeio PID          sum of read_bytes over PID and its descendants.
  benchlib.py blockmap DIR OUT    a hash of every 8 KiB block of every file below DIR (DIR/pg_wal
                                  aside), to OUT.
  benchlib.py blockdiff OLD NEW   compare two block maps: blocks, changed blocks (changed or
                                  new), changed 128 KiB chunks, changed files; one line.
  benchlib.py evict DIR...        drop the files below DIR from the page cache (posix_fadvise
                                  DONTNEED after fsync), so the next read comes from disk.
  benchlib.py report RAW          the table (medians, min, max, ratios, targets) from RAW lines
                                  "metric tool round value".
"""
import hashlib
import os
import pickle
import random
import statistics
import struct
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root):
    """Sums over root and its descendants: (RSS, RssAnon) in bytes. RSS counts the pages of
    a process's executable and libraries it has mapped, which depends on how much of those
    files the page cache holds (the kernel maps cached neighbours of a faulting page too);
    RssAnon is its private memory only."""
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
    total, anon, todo, seen = 0, 0, [root], set()
    children = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        anon += rss_anon(pid)
        todo.extend(children.get(pid, []))
    return total, anon


def rss_anon(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def read_bytes(pid="self"):
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmd_treeio(argv):
    root = int(argv[0])
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            children.setdefault(int(stat[stat.rindex(b")") + 2:].split()[1]), []).append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += read_bytes(pid)
        todo.extend(children.get(pid, []))
    print(total)


def cmd_run(argv):
    log = argv[0]
    assert argv[1] == "--", "usage: run LOG -- CMD..."
    cmd = argv[2:]
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        io0 = read_bytes()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            try:
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        peak_tree, peak_anon = 0, 0
        while True:
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                break
            rss, anon = tree_rss(pid)
            peak_tree, peak_anon = max(peak_tree, rss), max(peak_anon, anon)
            time.sleep(0.02)
        wall = time.monotonic() - start
        io = read_bytes() - io0
    code = os.waitstatus_to_exitcode(status)
    maxrss_mib = ru.ru_maxrss / 1024.0  # KiB on Linux
    peak_tree = max(peak_tree / 1048576.0, maxrss_mib)
    cpu = ru.ru_utime + ru.ru_stime
    print(f"{wall:.3f} {maxrss_mib:.1f} {peak_tree:.1f} {cpu:.2f} {io} {code} {peak_anon / 1048576.0:.1f}")


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


WORDS = b"alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega account branch teller".split()


def cmd_geninline(argv):
    total, rnd, txt = int(argv[0]) << 20, int(argv[1]), int(argv[2])
    rng = random.Random(1)
    out = sys.stdout.buffer
    out.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
    i = 0
    while i * (rnd + txt) < total:
        i += 1
        t = bytearray()
        while len(t) < txt:
            t += rng.choice(WORDS) + b" "
        t = bytes(t[:txt])
        out.write(struct.pack("!hii", 3, 4, i) + struct.pack("!i", rnd) + os.urandom(rnd) + struct.pack("!i", txt) + t)
    out.write(struct.pack("!h", -1))
    out.flush()


def file_blocks(top):
    """(relative path, [8-byte digest per 8 KiB block]) for every regular file below top."""
    for root, dirs, files in os.walk(top):
        if root == top and "pg_wal" in dirs:
            dirs.remove("pg_wal")
        for name in sorted(files):
            p = os.path.join(root, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            digests = []
            try:
                with open(p, "rb") as f:
                    while True:
                        b = f.read(8192)
                        if not b:
                            break
                        digests.append(hashlib.blake2b(b, digest_size=8).digest())
            except OSError:
                continue  # removed meanwhile
            yield os.path.relpath(p, top), digests


def cmd_blockmap(argv):
    with open(argv[1], "wb") as out:
        pickle.dump(dict(file_blocks(argv[0])), out)


def cmd_blockdiff(argv):
    with open(argv[0], "rb") as f:
        old = pickle.load(f)
    with open(argv[1], "rb") as f:
        new = pickle.load(f)
    blocks = changed = chunks = chunks_changed = files_changed = 0
    for path, nd in new.items():
        od = old.get(path, [])
        blocks += len(nd)
        diff = [i for i in range(len(nd)) if i >= len(od) or od[i] != nd[i]]
        changed += len(diff)
        chunks += (len(nd) + 15) // 16
        chunks_changed += len({i // 16 for i in diff})
        if diff or len(od) != len(nd):
            files_changed += 1
    print(f"{blocks} {changed} {chunks} {chunks_changed} {len(new)} {files_changed}")


TOOLS = ["pgharbor", "pgbr_enc", "pgbr_plain", "pg_basebackup"]
# backups also by pgharbor --method stream (BASE_BACKUP), for comparison with its default
# optional: pgharbor_base (another build, PGHARBOR_BASE_BIN), pgharbor_l1 (zstd level 1,
# BENCH_PGH_LEVEL1=1), pgharbor_go (the pure-Go zstd encoder, BENCH_PGH_GO=1); measured only
# when asked for, reported when present
BACKUP_TOOLS = ["pgharbor", "pgharbor_stream", "pgharbor_base", "pgharbor_l1", "pgharbor_go", "pgbr_enc", "pgbr_plain", "pg_basebackup"]
WAL_TOOLS = ["pgharbor", "pgbr_async", "pgbr_sync"]
NAMES = {
    "pgharbor": "pgharbor (age+zstd3)",
    "pgharbor_stream": "pgharbor --method stream",
    "pgharbor_base": "pgharbor, base build",
    "pgharbor_l1": "pgharbor (age+zstd1)",
    "pgharbor_go": "pgharbor (age+zstd3, Go enc)",
    "pgbr_enc": "pgBackRest aes+zst3",
    "pgbr_plain": "pgBackRest zst3",
    "pg_basebackup": "pg_basebackup zstd3",
    "pgbr_async": "pgBackRest async (aes+zst3)",
    "pgbr_sync": "pgBackRest sync (aes+zst3)",
}
# metric: (title, unit, tools, ratio denominators, target text, target check on the medians)
METRICS = [
    ("backup_s", "full backup wall time", "s", BACKUP_TOOLS, ["pgharbor_base", "pgharbor_go", "pgbr_enc", "pgbr_plain", "pg_basebackup"],
     "pgharbor <= 0.6x pgBackRest aes", lambda m: m["pgharbor"] <= 0.6 * m["pgbr_enc"]),
    ("backup_rss", "full backup peak RSS, largest process", "MiB", BACKUP_TOOLS, ["pgharbor_base", "pgharbor_go", "pgbr_enc", "pgbr_plain", "pg_basebackup"],
     "pgharbor <= 128 MiB", lambda m: m["pgharbor"] <= 128),
    ("backup_tree", "full backup peak RSS, sum over process tree", "MiB", BACKUP_TOOLS, ["pgharbor_base", "pgharbor_go", "pgbr_enc", "pgbr_plain", "pg_basebackup"],
     None, None),
    ("backup_anon", "full backup peak private memory (RssAnon), sum over process tree", "MiB", BACKUP_TOOLS, ["pgharbor_base", "pgharbor_go", "pgbr_enc", "pgbr_plain", "pg_basebackup"],
     None, None),
    ("backup_stored", "full backup stored size", "MB", BACKUP_TOOLS, ["pgharbor_base", "pgharbor_go", "pgbr_enc", "pgbr_plain", "pg_basebackup"], None, None),
    ("backup_cpu_gb", "full backup CPU seconds per GB of data directory without pg_wal (tool side)", "s/GB", BACKUP_TOOLS,
     ["pgharbor_base", "pgharbor_go", "pgbr_enc", "pgbr_plain", "pg_basebackup"], None, None),
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
    inline = False
    with open(argv[0]) as f:
        for line in f:
            if line.startswith("# cluster size") and "shape inline" in line:
                inline = True
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
        for h in ("pgharbor", "pgharbor_stream", "pgharbor_l1", "pgharbor_go"):
            if h not in med:
                continue
            for d in denoms:
                if d in med and med[d] > 0 and not (d in ("pgharbor_base", "pgharbor_go") and h != "pgharbor"):
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
    if inline:
        def med(metric, tool):
            v = data.get((metric, tool))
            return statistics.median(v) if v else None
        print("\nTargets (issue 21, full backups on the inline shape), on the medians:")
        w, b = med("backup_s", "pgharbor"), med("backup_s", "pgbr_enc")
        if w and b:
            print(f"  wall time pgharbor <= 0.6x pgBackRest aes: {w / b:.2f}x -> {'MET' if w <= 0.6 * b else 'MISSED'}")
        c, cb = med("backup_cpu_gb", "pgharbor"), med("backup_cpu_gb", "pgbr_enc")
        if c and cb:
            print(f"  (CPU per GB pgharbor / pgBackRest aes: {c / cb:.2f}x)")
        r = med("backup_rss", "pgharbor")
        if r:
            print(f"  peak RSS pgharbor <= 64 MiB: {r:.0f} MiB -> {'MET' if r <= 64 else 'MISSED'}")
        a, ab = med("backup_anon", "pgharbor"), med("backup_anon", "pgbr_enc")
        if a and ab:
            print(f"  (peak private memory, RssAnon over the process tree: pgharbor {a:.0f} MiB, pgBackRest aes {ab:.0f} MiB)")
        print("  wall time pgharbor <= 1.0x WAL-G: not measured (WAL-G not installable here)")


INCR_NAMES = {
    "pgharbor": "pgharbor (age+zstd3)",
    "pgbr_file": "pgBackRest aes+zst3, file",
    "pgbr_block": "pgBackRest aes+zst3, block",
    "incr": "pgharbor restore of the incr",
    "full": "pgharbor restore of a full",
    "all": "cluster",
}
INCR_METRICS = [
    ("changed_pct", "8 KiB blocks changed by the pgbench run", "%"),
    ("changed_chunks_pct", "128 KiB chunks changed by the pgbench run", "%"),
    ("changed_files", "files changed by the pgbench run", "files"),
    ("full_s", "full backup wall time", "s"),
    ("full_stored", "full backup stored bytes (repository growth, WAL aside)", "MB"),
    ("full_cpu", "full backup CPU (user + system, tool side)", "s"),
    ("full_rss", "full backup peak RSS, largest process", "MiB"),
    ("incr_s", "incremental backup wall time", "s"),
    ("incr_stored", "incremental backup stored bytes (repository growth, WAL aside)", "MB"),
    ("incr_read", "incremental backup bytes read from storage (data directory evicted first)", "MB"),
    ("incr_cpu", "incremental backup CPU (user + system, tool side)", "s"),
    ("incr_rss", "incremental backup peak RSS, largest process", "MiB"),
    ("full2_s", "pgharbor full backup of the post-change state (restore reference)", "s"),
    ("restore_s", "restore wall time (tool exits)", "s"),
    ("restore_sync_s", "restore wall time + sync(1) after it", "s"),
    ("restore_rss", "restore peak RSS, largest process", "MiB"),
]


def load_raw(path):
    data, fails = {}, {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4 or parts[0].startswith("#"):
                continue
            metric, tool, _rnd, value = parts
            if value == "FAIL":
                fails[(metric, tool)] = fails.get((metric, tool), 0) + 1
                continue
            data.setdefault((metric, tool), []).append(float(value))
    return data, fails


def cmd_report_incr(argv):
    data, fails = load_raw(argv[0])
    out = []
    for metric, title, unit in INCR_METRICS:
        present = [t for t in INCR_NAMES if (metric, t) in data or (metric, t) in fails]
        if not present:
            continue
        out.append(f"\n{title} [{unit}]")
        out.append(f"  {'':30} {'median':>8} {'min':>8} {'max':>8} {'n':>3}")
        for t in present:
            vals = data.get((metric, t), [])
            nf = fails.get((metric, t), 0)
            if vals:
                line = f"  {INCR_NAMES[t]:30} {fmt(statistics.median(vals)):>8} {fmt(min(vals)):>8} {fmt(max(vals)):>8} {len(vals):>3}"
            else:
                line = f"  {INCR_NAMES[t]:30} {'-':>8} {'-':>8} {'-':>8} {0:>3}"
            out.append(line + (f"  ({nf} failed)" if nf else ""))

    def med(metric, tool):
        vals = data.get((metric, tool))
        return statistics.median(vals) if vals else None

    checks = [
        ("incr stored bytes: pgharbor <= 0.2x pgBackRest file-level incr",
         med("incr_stored", "pgharbor"), med("incr_stored", "pgbr_file"), 0.2),
        ("incr wall time: pgharbor incr <= 0.5x pgharbor full",
         med("incr_s", "pgharbor"), med("full_s", "pgharbor"), 0.5),
        ("restore of the incr <= 1.1x restore of a full of the same state (tool exits)",
         med("restore_s", "incr"), med("restore_s", "full"), 1.1),
        ("restore of the incr <= 1.1x restore of a full of the same state (+ sync)",
         med("restore_sync_s", "incr"), med("restore_sync_s", "full"), 1.1),
    ]
    out.append("\nRatios (on the medians) and targets (issue 21):")
    for name, a, b, limit in checks:
        if a is None or not b:
            out.append(f"  {name}: n/a")
            continue
        r = a / b
        out.append(f"  {name}: {r:.3f}x -> {'MET' if r <= limit else 'MISSED'}")
    for metric, what in (("incr_stored", "stored"), ("incr_s", "wall"), ("incr_read", "read")):
        a = med(metric, "pgharbor")
        for d in ("pgbr_file", "pgbr_block"):
            b = med(metric, d)
            if a is not None and b:
                out.append(f"  incr {what}: pgharbor / {INCR_NAMES[d]}: {a / b:.3f}x")
    print("\n".join(out))


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
    cmds = {"run": cmd_run, "gencopy": cmd_gencopy, "geninline": cmd_geninline, "treeio": cmd_treeio,
            "blockmap": cmd_blockmap, "blockdiff": cmd_blockdiff, "report": cmd_report, "report-incr": cmd_report_incr, "evict": cmd_evict}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmds[sys.argv[1]](sys.argv[2:])
