#!/usr/bin/env python3
"""Turns one bench/run output directory into bench/results/*.json and BENCHMARKS.md."""
import argparse, datetime, glob, json, os, platform, re, statistics, subprocess, sys, textwrap


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def oha(path):
    d = json.load(open(path))
    lat = d.get("latencyPercentiles", {})
    codes = {str(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    errors = sum(d.get("errorDistribution", {}).values())
    ms = lambda k: round(lat[k] * 1000, 3) if lat.get(k) is not None else None
    return {
        "rps": round(d["summary"]["requestsPerSec"], 1),
        "p50_ms": ms("p50"), "p95_ms": ms("p95"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
        "statuses": codes, "errors": errors,
    }


def oha_repeated(o, name):
    """A fixed-rate scenario run several times (<name>_r<i>.json): the median of each figure,
    with every repetition's p95 and p99 kept; or the single run <name>.json."""
    paths = sorted(glob.glob(f"{o}/{name}_r*.json"))
    if not paths:
        return oha(f"{o}/{name}.json")
    runs = [oha(p) for p in paths]
    out = {}
    for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "p999_ms"):
        values = [r[k] for r in runs if r[k] is not None]
        out[k] = round(statistics.median(values), 3) if values else None
    out["statuses"] = {}
    for r in runs:
        for code, n in r["statuses"].items():
            out["statuses"][code] = out["statuses"].get(code, 0) + n
    out["errors"] = sum(r["errors"] for r in runs)
    out["repeats"] = [{"p95_ms": r["p95_ms"], "p99_ms": r["p99_ms"], **background(p[:-len(".json")])}
                      for p, r in zip(paths, runs)]
    return out


def background(stem):
    """What ran beside one repetition (<stem>.bg, from bench/run's db_rest and background):
    the machine's steal time, and the benchmark database's checkpoints and autovacuum or
    autoanalyze runs; nothing when not recorded."""
    path = f"{stem}.bg"
    if not os.path.exists(path):
        return {}
    v = [float(x) for x in open(path).read().split()]
    if len(v) != 8:
        return {}
    return {"steal_s": round((v[4] - v[0]) / v[7], 2), "checkpoints": int(v[5] - v[1]),
            "autovacuums": int(v[6] - v[2])}


def repeat_text(r):
    """One repetition's p99, and what ran beside it when anything did."""
    extra = [f"{r['checkpoints']} checkpoint(s)" if r.get("checkpoints") else "",
             f"{r['autovacuums']} autovacuum/analyze run(s)" if r.get("autovacuums") else "",
             f"{r['steal_s']} s stolen" if r.get("steal_s") else ""]
    extra = [e for e in extra if e]
    return f"{r['p99_ms']}" + (f" ({', '.join(extra)})" if extra else "")


# The read's statements through pgbench at the server's half rate (pgbench_<key>_fixed in
# bench/run), each variant's label: alone, with the machine as busy as through the server,
# in as many round trips as through the server (read_trips), and with the transaction in
# one round trip (read_pipelined); bench/run makes both from bench/read.sql.
READ_TAILS = {
    "read": "",
    "read_loaded": "the machine as busy as through the server",
    "read_trips": "in as many round trips as through the server",
    "read_trips_loaded": "in as many round trips as through the server, the machine as busy",
    "read_pipelined": "the two extra round trips kept, the transaction in one as proposed",
    "read_pipelined_loaded": "the two extra round trips kept, the transaction in one as proposed, the machine as busy",
}


def repeats_note(s, labels, pgt=None):
    """Every repetition of the fixed-rate scenarios, under the table of medians."""
    lines = [f"- {labels[k]}: p95 " + ", ".join(str(r["p95_ms"]) for r in v["repeats"])
             + "; p99 " + ", ".join(repeat_text(r) for r in v["repeats"])
             for k, v in s.items() if "repeats" in v and k in labels and k.endswith("_fixed")]
    lines += [f"- PostgreSQL alone, pgbench's {f'read ({READ_TAILS[k]})' if READ_TAILS.get(k) else k} "
              "at the server's rate: p95 "
              + ", ".join(str(r["p95_ms"]) for r in v["repeats"])
              + "; p99 " + ", ".join(repeat_text(r) for r in v["repeats"])
              for k, v in (pgt or {}).items() if len(v.get("repeats", [])) > 1]
    if not lines:
        return ""
    return ("\nThe fixed-rate scenarios run several times in a row, the database brought to rest before\n"
            "each (a VACUUM, a checkpoint, no autovacuum running) and the server's after a second of the\n"
            "same load, not measured (pgbench's first second is left out likewise); the table shows the\n"
            "median of each figure, and every repetition's p95 and p99 (ms) follow, with what ran\n"
            "beside it when anything did:\n\n"
            + "\n".join(lines) + "\n")


def wrk(path):
    text = open(path).read()
    m = re.search(r"^BENCH_JSON (.*)$", text, re.M)
    if not m:
        raise SystemExit(f"no summary in {path}:\n{text}")
    d = json.loads(m.group(1))
    return {
        "rps": round(d["requests"] / (d["duration_us"] / 1e6), 1),
        "p50_ms": d["p50_ms"], "p95_ms": d.get("p95_ms"), "p99_ms": d["p99_ms"], "p999_ms": d["p999_ms"],
        "statuses": d["statuses"], "errors": d["errors"],
    }


def pgbench(path):
    text = open(path).read()
    tps = re.search(r"tps = ([0-9.]+)", text)
    lat = re.search(r"latency average = ([0-9.]+) ms", text)
    if not tps:
        raise SystemExit(f"pgbench failed:\n{text}")
    failed = re.search(r"number of failed transactions: (\d+)", text)
    out = {"tps": float(tps.group(1)), "latency_avg_ms": float(lat.group(1)) if lat else None}
    # A script that errs (bench/complete.sql finding no planned procedure) aborts its client.
    if (failed and int(failed.group(1))) or "aborted" in text:
        out["failed"] = int(failed.group(1)) if failed else None
        out["aborted"] = [l for l in text.splitlines() if "aborted" in l][:3]
    return out





def pg_tail_once(d):
    """Percentiles of one pgbench fixed-rate run (directory d) from its per-transaction logs
    (latency from the scheduled start), leaving out the first second; None without logs."""
    rows = []
    for path in glob.glob(f"{d}/pgbench_log.*"):
        for line in open(path):
            f = line.split()
            if len(f) >= 6 and f[2].isdigit():
                rows.append((int(f[4]) + int(f[5]) / 1e6, int(f[2]) / 1000))
    if not rows:
        return None
    start = min(t for t, _ in rows) + 1
    v = sorted(ms for t, ms in rows if t > start)
    if not v:
        return None
    q = lambda p: round(v[min(len(v) - 1, int(len(v) * p))], 3)
    return {"transactions": len(v), "p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99)}


def pg_tail(o, script):
    """pgbench's fixed-rate runs of <script> (pgbench_<script>_fixed_r<i>, or one
    pgbench_<script>_fixed): the median of each percentile, every repetition's kept."""
    dirs = sorted(d for d in glob.glob(f"{o}/pgbench_{script}_fixed_r*") if os.path.isdir(d))
    if not dirs:
        return pg_tail_once(f"{o}/pgbench_{script}_fixed")
    runs = [(d, t) for d in dirs if (t := pg_tail_once(d))]
    if not runs:
        return None
    out = {"transactions": sum(t["transactions"] for _, t in runs)}
    for k in ("p50_ms", "p95_ms", "p99_ms"):
        out[k] = round(statistics.median(t[k] for _, t in runs), 3)
    out["repeats"] = [{"p95_ms": t["p95_ms"], "p99_ms": t["p99_ms"], **background(d)} for d, t in runs]
    return out


def gaps(cpu, pg, s, seconds, ip):
    """The explanation of the ceiling gap, computed from this run's CPU profile and, where
    it has them, the in-process runs (`ip`, see [`in_process`])."""
    if "patient_read" not in cpu or "pgbench_read" not in cpu:
        return ""
    r, b = cpu["patient_read"], cpu["pgbench_read"]
    per_req = (r["busy_cpu_s"] * 1000) / (s["patient_read"]["rps"] * seconds)
    per_tx = (b["busy_cpu_s"] * 1000) / (pg["read"]["tps"] * seconds)
    server_share = r["server_ms_per_request"] / per_req if per_req else 0
    pg_srv, pg_b = r["postgres_ms_per_request"], b["postgres_ms_per_request"]
    bound = per_tx / pg_srv if pg_srv else 0
    if bound < 1:
        bound_text = (f"Even if the server, Redis and oha cost nothing, the fraction could reach only "
                      f"{bound:.0%} on this machine.")
    else:
        bound_text = ("Were the server, Redis and oha free, the server's path would pass the ceiling "
                      f"({bound:.0%}): the gap is their CPU on the same two cores.")
    # The server's CPU per read at which the fraction would reach its target of 60%, were
    # PostgreSQL's, Redis's and oha's cost per read what they are in this run.
    redis = 1000 * r["redis_cpu_s"] / (s["patient_read"]["rps"] * seconds)
    rest = pg_srv + redis + r["other_ms_per_request"]
    needed = per_tx / 0.60 - rest
    trips = ip.get("read", {}).get("trips", {}).get("server_ms_per_request")
    trips_text = f"; in process, its round trips alone cost {trips} ms: {SERVER_CPU}" if trips else ""
    needs_text = (f" For a fraction of 60%, all CPU per read could be at most {per_tx / 0.60:.3f} ms; "
                  f"PostgreSQL, Redis and oha with the kernel took {rest:.3f} ms of it in this run, which leaves "
                  + (f"{needed:.3f} ms for the server (its target is 0.18 ms{trips_text})."
                     if needed > 0 else "nothing for the server."))
    # The same arithmetic with PostgreSQL's cost per read as at pgbench's own rate: where
    # pgbench held to the server's rate costs PostgreSQL as much or more per transaction as
    # the server's reads did, the difference is the rate, not work the server adds.
    at_rate = ""
    if "pgbench_read_same" in cpu:
        held = cpu["pgbench_read_same"]["postgres_ms_per_request"]
        as_fast = per_tx / (per_req - pg_srv + pg_b)
        at_rate = (f" PostgreSQL's CPU per transaction depends on the rate: held to the server's closed-loop "
                   f"rate, pgbench's transactions cost it {held} ms each, "
                   f"{'as much as or more than' if held >= pg_srv else 'less than'} the server's reads "
                   f"({pg_srv} ms). Were PostgreSQL to spend on each read through the server what it spends "
                   f"per transaction at pgbench's own rate ({pg_b} ms), the fraction by the same arithmetic "
                   f"would be {as_fast:.0%}.")
    same_rate = ""
    if "patient_read_fixed" in cpu and "pgbench_read_fixed" in cpu:
        f, fb = cpu["patient_read_fixed"]["postgres_ms_per_request"], cpu["pgbench_read_fixed"]["postgres_ms_per_request"]
        same_rate = (f" At one rate, the server's half rate on 32 connections, PostgreSQL spent {f} ms per "
                     f"read through the server and {fb} ms through pgbench: its cost per transaction depends "
                     "on how often it is woken, so the closed-loop comparison also compares two rates.")
    list_text = ""
    if "patient_list" in cpu and "pgbench_list" in cpu and "list" in pg:
        l, lb = cpu["patient_list"], cpu["pgbench_list"]
        list_text = f"""
A page of 50 patients costs the server {l['server_ms_per_request']} ms of CPU (50 rows decoded, 50
patients serialised to JSON and the page gzipped, as the client accepts it) next to
PostgreSQL's {l['postgres_ms_per_request']} ms through the server ({lb['postgres_ms_per_request']} ms
through pgbench): the server's share of a page is larger than of a single read, so the
list's fraction is lower.
"""
    return f"""### Why the ceiling fraction is what it is

Every closed-loop run keeps both cores busy (the "busy" column is close to the
{os.cpu_count() * seconds} CPU-seconds available), so throughput is the machine's CPU divided
by the CPU one request costs, load generator included. A patient read through the API
costs {per_req:.2f} ms of CPU in all: the server {r['server_ms_per_request']} ms (HTTP,
JSON, token check, rate limiter), PostgreSQL {r['postgres_ms_per_request']} ms,
Redis {redis:.3f} ms, and oha with
the kernel {r['other_ms_per_request']} ms. The same statements through pgbench cost
{per_tx:.2f} ms per transaction (PostgreSQL {b['postgres_ms_per_request']} ms, the pgbench client and the kernel
{b['other_ms_per_request']} ms). The fraction ({per_tx / per_req:.0%} by this arithmetic) is
what the server, Redis and the HTTP load generator add next to the database, all on the
same two cores: the server alone is {server_share:.0%} of the total. PostgreSQL itself
spends {"more" if pg_srv > pg_b else "less"} CPU per request through the server ({pg_srv} ms)
than per transaction through pgbench ({pg_b} ms): "PostgreSQL through the server and through
pgbench" below compares the two function by function.{same_rate} {bound_text}{needs_text}{at_rate} On a deployment
where PostgreSQL has cores of its own, the server's share does not take throughput from
the database.
{list_text}
The profile of the server during the closed-loop read is below ("Server profile")."""


def in_process(o, seconds):
    """The read's and the page's server CPU in process (bench/run's inproc_<req>_<depth>,
    examples/in_process.rs): {req: {depth: figures}}."""
    out = {}
    for req in ("read", "list"):
        for depth in ("trips", "calls", "router"):
            stem = f"{o}/inproc_{req}_{depth}"
            if not (os.path.exists(f"{stem}.json") and os.path.exists(f"{stem}.cpu")):
                continue
            d = json.loads(open(f"{stem}.json").read().strip().splitlines()[-1])
            c = cpu_entry(f"{stem}.cpu", d["ok"] + d["other"], seconds)
            out.setdefault(req, {})[depth] = {
                "rate": round(d["rate"], 1), "server_ms_per_request": round(d["cpu_ms_per_request"], 3),
                "postgres_ms_per_request": c["postgres_ms_per_request"],
                "redis_ms_per_request": round(1000 * c["redis_cpu_s"] / c["requests"], 3) if c["requests"] else None,
            }
    return out


def in_process_section(ip, cpu, seconds):
    """Where the server's CPU per read and per page goes, from the in-process runs."""
    if "read" not in ip or "patient_read" not in cpu:
        return ""
    names = {"trips": "the round trips alone (`trips`)", "calls": "the rate limit and the handler called (`calls`)",
             "router": "the whole router (`router`)"}
    rows = []
    for req, label, closed in (("read", "patient read", "patient_read"), ("list", "page of 50", "patient_list")):
        for depth, v in ip.get(req, {}).items():
            rows.append(f"| {label} | {names[depth]} | {v['rate']} | {v['server_ms_per_request']} | "
                        f"{v['postgres_ms_per_request']} | {v['redis_ms_per_request']} |")
        if closed in cpu:
            c = cpu[closed]
            rows.append(f"| {label} | through HTTP, the closed loop above (median) | – | {c['server_ms_per_request']} | "
                        f"{c['postgres_ms_per_request']} | – |")
    def more(x):
        """A difference between two depths; below zero, the deeper run cost more at its rate."""
        return f"{x:.3f} ms" if x >= 0 else f"nothing measurable ({x:.3f} ms: the run below it cost more at its own rate)"

    r = ip["read"]
    text = ""
    if all(k in r for k in ("trips", "calls", "router")):
        t, c, w = (r[k]["server_ms_per_request"] for k in ("trips", "calls", "router"))
        h = cpu["patient_read"]["server_ms_per_request"]
        text = f"""
For a patient read, by difference: the round trips {t} ms, the handler's own work on top
(the statement's row decoded, the patient to JSON) {more(c - t)}, the router's layers
(request id, tracing, timeout, limits, CORS, security headers, metrics, routing) {more(w - c)},
and the HTTP connection (hyper, the sockets to oha) {more(h - w)}. The round trips alone
are {t / h:.0%} of the server's CPU per read: against the target of 0.18 ms they leave
{f"{0.18 - t:.3f} ms" if t < 0.18 else "nothing"} for everything else on this machine. Each difference compares two runs at
their own rates, so it is approximate (a process woken less often spends less per request).
"""
    l = ip.get("list", {})
    if all(k in l for k in ("calls", "router")) and "patient_list" in cpu:
        c, w = l["calls"]["server_ms_per_request"], l["router"]["server_ms_per_request"]
        h = cpu["patient_list"]["server_ms_per_request"]
        text += f"""
For a page of 50: the rate limit and the handler (the round trips, 51 rows decoded, 50
patients to JSON) {c} ms, the router's layers with gzip on top {more(w - c)}, and the HTTP
connection {more(h - w)}.
"""
    return f"""### Where the server's CPU per request goes

The server's CPU per read and per page, measured again without the HTTP connection:
`examples/in_process.rs` builds the server's own state from its configuration and sends the
same requests, 32 at a time for {seconds} s, into its router in process, or calls the rate
limit and the handler directly, or makes only the round trips a read makes (the rate
limit's Redis call, the caller's begin with the session check, `SELECT 1`, the commit, with
the access token checked once as the server does). The
server's column is that process's CPU per request (user and system, every thread); the
server it runs beside stays idle.

| request | depth | req/s | server ms/req | PostgreSQL ms/req | Redis ms/req |
|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n" + text


def page_parts(o, seconds):
    """PostgreSQL's CPU per transaction of the page's parts (bench/run's
    pgbench_page_<part>_r<i>), the median over the rounds: {part: ms}."""
    out = {}
    for part in ("session", "read", "audit"):
        ms = []
        for path in sorted(glob.glob(f"{o}/pgbench_page_{part}_r*.cpu")):
            count = pgbench(f"{path[:-len('.cpu')]}.txt")["tps"] * seconds
            ms.append(cpu_entry(path, count, seconds)["postgres_ms_per_request"])
        if ms:
            out[part] = round(statistics.median(ms), 3)
    return out


def page_parts_section(parts, cpu):
    """What the page's own SQL is made of, against its target."""
    if len(parts) < 3 or "pgbench_list" not in cpu:
        return ""
    a, b, c = parts["session"], parts["read"], parts["audit"]
    whole = cpu["pgbench_list"]["postgres_ms_per_request"]
    floor = b + c - a
    verdict = "more" if floor > 0.40 else "less"
    return f"""### What the page's SQL is made of

The page's own statements (`bench/list.sql`) cost PostgreSQL {whole} ms per page through
pgbench (the median of the closed-loop pairs). Its parts, each through pgbench alone the
same way (32 connections, `-M prepared`), the three in turn, the median of the rounds:

| part | script | PostgreSQL ms per transaction | the part alone |
|---|---|---|---|
| the transaction: `BEGIN`, the settings and the session check, `COMMIT` | `bench/page_session.sql` | {a} | {a} |
| the transaction and the page's 51 rows, read and sent as text | `bench/page_read.sql` | {b} | {b - a:.3f} |
| the transaction and the audit event with its 50 ids, durably committed | `bench/page_audit.sql` | {c} | {c - a:.3f} |
| the page and its audit event in one statement | `bench/list.sql` | {whole} | – |

Each part is what the design asks of a page: the session check on every request, the
rows, and the audit event that records which patients were shown. Measured apart they come
to {floor:.3f} ms, {verdict} than the target of 0.40 ms for the whole page on this machine.
"""


# PostgreSQL's CPU per transaction of bench/read.sql through pgbench in run J, the run the
# targets for a request's cost were set against: the machine's speed then.
RUN_J_PGBENCH_READ_MS = 0.356


def scaled_rows(figure, ms, pgbench_read):
    """A figure in ms of CPU as on run J's machine, scaled by how much more or less PostgreSQL
    spent on the same pgbench transaction in this run than in run J: one row, or none
    without that cost."""
    here = pgbench_read.get("postgres_ms_per_request")
    if not here or ms is None:
        return []
    return [(f"beside it: {figure} at run J's machine speed (pgbench's read cost PostgreSQL "
             f"{RUN_J_PGBENCH_READ_MS} ms there, {here} ms here)",
             f"{ms * RUN_J_PGBENCH_READ_MS / here:.3f} ms", "–", None)]


def costs(cpu, pg, s, pgt, seal, idle_rss_mb, peak_rss_mb, seconds, ip=None):
    """What a request costs the server and PostgreSQL, against the targets for them: rows
    of (figure, measured, target, met); `ip`, the in-process runs (see [`in_process`])."""
    ip = ip or {}
    rows = []
    if "patient_read" in cpu and "pgbench_read" in cpu:
        r, b = cpu["patient_read"], cpu["pgbench_read"]
        ratio = r["postgres_ms_per_request"] / b["postgres_ms_per_request"]
        rows.append(("PostgreSQL CPU per patient read, through the server ÷ through pgbench",
                     f"{ratio:.2f}× ({r['postgres_ms_per_request']} ÷ {b['postgres_ms_per_request']} ms)", "≤ 1.15×", ratio <= 1.15))
        rows.append(("server CPU per patient read", f"{r['server_ms_per_request']} ms", "≤ 0.18 ms",
                     r["server_ms_per_request"] <= 0.18))
        rows.extend(scaled_rows("the same", r["server_ms_per_request"], b))
        if "router" in ip.get("read", {}):
            rows.append(("beside it: the same without the HTTP connection (in process, the whole router)",
                         f"{ip['read']['router']['server_ms_per_request']} ms", "–", None))
        per_req = (r["busy_cpu_s"] * 1000) / (s["patient_read"]["rps"] * seconds)
        per_tx = (b["busy_cpu_s"] * 1000) / (pg["read"]["tps"] * seconds)
        rows.append(("all CPU per read through the server ÷ pgbench's per transaction",
                     f"{per_req / per_tx:.2f}× ({per_req:.3f} ÷ {per_tx:.3f} ms)", "≤ 1.6×", per_req / per_tx <= 1.6))
    if "patient_read_fixed" in cpu and "pgbench_read_fixed" in cpu:
        r, b = cpu["patient_read_fixed"], cpu["pgbench_read_fixed"]
        ratio = r["postgres_ms_per_request"] / b["postgres_ms_per_request"]
        rows.insert(1, ("beside it: the same at one rate, the server's half rate (32 connections)",
                        f"{ratio:.2f}× ({r['postgres_ms_per_request']} ÷ {b['postgres_ms_per_request']} ms)", "–", None))
    if "patient_read" in cpu and "pgbench_read_same" in cpu:
        r, b = cpu["patient_read"], cpu["pgbench_read_same"]
        ratio = r["postgres_ms_per_request"] / b["postgres_ms_per_request"]
        rows.insert(1 + ("patient_read_fixed" in cpu and "pgbench_read_fixed" in cpu),
                    ("beside it: pgbench held to the server's closed-loop rate (32 connections)",
                     f"{ratio:.2f}× ({r['postgres_ms_per_request']} ÷ {b['postgres_ms_per_request']} ms)", "–", None))
        all_srv = (r["busy_cpu_s"] * 1000) / (s["patient_read"]["rps"] * seconds)
        all_b = 1000 * b["busy_cpu_s"] / b["requests"]
        rows.insert(rows.index(next(x for x in rows if x[0].startswith("all CPU per read"))) + 1,
                    ("beside it: the same with pgbench held to the server's closed-loop rate",
                     f"{all_srv / all_b:.2f}× ({all_srv:.3f} ÷ {all_b:.3f} ms)", "–", None))
    if "patient_list" in cpu:
        l = cpu["patient_list"]
        rows.append(("server CPU per page of 50", f"{l['server_ms_per_request']} ms", "≤ 0.45 ms",
                     l["server_ms_per_request"] <= 0.45))
        if "router" in ip.get("list", {}):
            rows.append(("beside it: the same without the HTTP connection (in process, the whole router)",
                         f"{ip['list']['router']['server_ms_per_request']} ms", "–", None))
    if "pgbench_list" in cpu:
        lb = cpu["pgbench_list"]
        rows.append(("PostgreSQL CPU per page of 50 through pgbench (the page's own SQL)",
                     f"{lb['postgres_ms_per_request']} ms", "≤ 0.40 ms", lb["postgres_ms_per_request"] <= 0.40))
        if "pgbench_read" in cpu:
            rows.extend(scaled_rows("the same", lb["postgres_ms_per_request"], cpu["pgbench_read"]))
    if "patient_list_fixed" in cpu and "pgbench_list_fixed" in cpu:
        l, lb = cpu["patient_list_fixed"], cpu["pgbench_list_fixed"]
        rows.append(("beside it: PostgreSQL CPU per page at the server's half rate, through the server / through pgbench",
                     f"{l['postgres_ms_per_request']} / {lb['postgres_ms_per_request']} ms", "–", None))
    frac = s["patient_read"]["rps"] / pg["read"]["tps"]
    rows.append(("patient read, fraction of the pgbench ceiling (32 connections)", f"{frac:.0%}", "≥ 60%", frac >= 0.6))
    if "read" in pgt:
        t = s["patient_read_fixed"]["p99_ms"] / pgt["read"]["p99_ms"]
        rows.append(("read p99 at half rate ÷ PostgreSQL alone at that rate",
                     f"{t:.2f}× ({s['patient_read_fixed']['p99_ms']} ÷ {pgt['read']['p99_ms']} ms)", "≤ 1.3×", t <= 1.3))
        for key in ("read_loaded", "read_trips_loaded"):
            if key in pgt:
                u = s["patient_read_fixed"]["p99_ms"] / pgt[key]["p99_ms"]
                rows.append((f"beside it: the same with PostgreSQL alone, {READ_TAILS[key]}",
                             f"{u:.2f}× ({s['patient_read_fixed']['p99_ms']} ÷ {pgt[key]['p99_ms']} ms)", "–", None))
    rows.append(("name search p95, 100,000-patient clinic, half rate", f"{s['search_fixed']['p95_ms']} ms", "< 20 ms",
                 s["search_fixed"]["p95_ms"] < 20))
    if "booking" in seal:
        # The target is the booking load's; the whole run's longest (closed-loop scenarios at
        # up to 64 connections included) is shown beside it.
        rows.append(("longest single sealing transaction under the booking load (the whole run's beside it)",
                     " / ".join(f"{seal[k]['longest_ms']} ms" for k in ("booking", "run") if k in seal), "< 20 ms",
                     seal["booking"]["longest_ms"] < 20))
        b = seal["booking"]
        if "longest_on_core_ms" in b:
            rows.append(("beside it: that transaction on a core / waiting for one; the most any spent on a core",
                         f"{b['longest_on_core_ms']} / {b['longest_waiting_ms']} ms; {b['most_on_core_ms']} ms", "–", None))
    rows.append(("peak RSS at 256 connections / idle", f"{peak_rss_mb} / {idle_rss_mb} MB", "< 64 / < 30 MB",
                 peak_rss_mb < 64 and idle_rss_mb < 30))
    return rows


def costs_section(rows):
    body = "\n".join(f"| {f} | {m} | {t} | {'–' if ok is None else 'yes' if ok else 'no'} | "
                     f"{cost_why(f) if ok is False else ''} |" for f, m, t, ok in rows)
    return f"""Each request's CPU, from `/proc` over the closed-loop runs (see "Where the CPU goes"), and
the figures that follow from it, against the targets for them. A missed figure's last
column names the section, computed from this run, that shows why.

| figure | measured | target | met | why, when missed |
|---|---|---|---|---|
{body}

What was changed for these figures, and why those not met are where they are: "what a
request costs" in [bench/history.md](bench/history.md).
"""


PERF_ROW = re.compile(r"^\s*[\d.]+%\s+(\d+)\s+(\d+):(\S+)\s+(.*?)\s*$")
PERF_HZ = 999


def us_per(samples, n):
    """perf samples (one per 1/PERF_HZ s of CPU) as microseconds per request of n."""
    return 1e6 * samples / PERF_HZ / n


def perf_rows(o, name, key, who):
    """[(object or function, samples)] of the server's threads or of PostgreSQL's processes,
    from a `perf report -n --sort pid,<key>` that bench/run kept."""
    path = f"{o}/{name}.{key}.txt"
    if not os.path.exists(path):
        return []
    tids = set(open(f"{o}/{name}.server-tids").read().split()) if os.path.exists(f"{o}/{name}.server-tids") else set()
    agg = {}
    for line in open(path):
        m = PERF_ROW.match(line)
        if m and ((who == "postgres" and m.group(3) == "postgres") or (who == "server" and m.group(2) in tids)):
            agg[m.group(4)] = agg.get(m.group(4), 0) + int(m.group(1))
    return sorted(agg.items(), key=lambda kv: -kv[1])


def cpu_entry(path, count, seconds):
    """The CPU a scenario used (<name>.cpu: bench/run's cpu_snapshot before and after it), in
    all and per request or transaction (count of them)."""
    v = [float(x) for x in open(path).read().split()]
    before, after = v[:len(v) // 2], v[len(v) // 2:]
    tick = after[4]
    switches = after[5] - before[5] if len(after) > 5 else None
    d = [(after[i] - before[i]) / tick for i in range(4)]
    out = {
        "requests": count, "busy_cpu_s": round(d[3], 2), "server_cpu_s": round(d[0], 2), "postgres_cpu_s": round(d[1], 2),
        "redis_cpu_s": round(d[2], 2), "other_cpu_s": round(d[3] - d[0] - d[1] - d[2], 2),
        "server_ms_per_request": round(1000 * d[0] / count, 3) if count else None,
        "postgres_ms_per_request": round(1000 * d[1] / count, 3) if count else None,
        "other_ms_per_request": round(1000 * (d[3] - d[0] - d[1] - d[2]) / count, 3) if count else None,
        "busy_share": round(d[3] / (os.cpu_count() * seconds), 2),
        "switches_per_request": round(switches / count, 1) if switches is not None and count else None,
    }
    if len(after) > 6:
        out["steal_cpu_s"] = round((after[6] - before[6]) / tick, 2)
    return out


def pgbench_repeated(o, script):
    """pgbench's closed-loop run of <script> (pgbench_<script>_r<i>.txt, several in turn with
    the server's, or one pgbench_<script>.txt): the median throughput and latency, every
    repetition's throughput kept."""
    paths = sorted(glob.glob(f"{o}/pgbench_{script}_r*.txt"))
    if not paths:
        return pgbench(f"{o}/pgbench_{script}.txt")
    runs = [pgbench(p) for p in paths]
    out = {"tps": statistics.median(r["tps"] for r in runs),
           "latency_avg_ms": statistics.median(r["latency_avg_ms"] for r in runs if r["latency_avg_ms"] is not None),
           "repeats": [round(r["tps"], 1) for r in runs]}
    for r in runs:
        if "failed" in r or "aborted" in r:
            out["failed"], out["aborted"] = r.get("failed"), r.get("aborted")
    return out


def pairs_note(pg):
    """How many closed-loop pairs of the read and the page ran, and their pgbench rates."""
    reps = {k: pg[k]["repeats"] for k in ("read", "list") if k in pg and len(pg[k].get("repeats", [])) > 1}
    if not reps:
        return ""
    return ("; the pairs ran " + str(len(next(iter(reps.values())))) + " times in turn, and the tables show the "
            "median of each figure (pgbench's transactions per second in each: "
            + "; ".join(f"{k} " + ", ".join(f"{t:,.0f}" for t in v) for k, v in reps.items()) + ")")


def processed(path):
    """Transactions a pgbench run reports in its summary."""
    m = re.search(r"number of transactions actually processed: (\d+)", open(path).read()) if os.path.exists(path) else None
    return int(m.group(1)) if m else 0


def completed(o, name):
    """Requests (oha) or transactions (pgbench) completed in a profiled run."""
    if os.path.exists(f"{o}/{name}.json"):
        return sum(json.load(open(f"{o}/{name}.json")).get("statusCodeDistribution", {}).values())
    if os.path.exists(f"{o}/{name}.txt"):
        m = re.search(r"number of transactions actually processed: (\d+)", open(f"{o}/{name}.txt").read())
        return int(m.group(1)) if m else 0
    return 0


def block(rows, limit):
    return "\n".join(f"{100 * n / max(1, sum(c for _, c in rows)):6.2f}%  {name}" for name, n in rows[:limit])


def tail(cpu, s, pgt):
    """Why the fixed-rate percentiles depend on the machine's state, from this run's CPU and
    the database's own tail at the same rates."""
    pairs = [(c, f) for c, f in (("patient_read", "patient_read_fixed"), ("patient_list", "patient_list_fixed"))
             if c in cpu and f in cpu]
    if not pairs:
        return ""
    floor = ""
    rows = [(label, s[f], pgt.get(k)) for label, f, k in
            (("patient read", "patient_read_fixed", "read"), ("patient list", "patient_list_fixed", "list"))
            if pgt.get(k)]
    if rows:
        floor = """
The database alone has this tail too. The same statements through `pgbench -R` at the
same rates and concurrency (32 connections), with the server stopped and nothing else at
work on the machine, each transaction's latency counted from its scheduled start:

| request | rate | through the server: p50 / p95 / p99 (ms) | PostgreSQL alone: p50 / p95 / p99 (ms) |
|---|---|---|---|
""" + "\n".join(f"| {label} | {v['rps']}/s | {v['p50_ms']} / {v['p95_ms']} / {v['p99_ms']} | "
                f"{b['p50_ms']} / {b['p95_ms']} / {b['p99_ms']} |" for label, v, b in rows) + """

Where PostgreSQL's own p99 at that rate is above 10 ms, no server in front of it can
meet the target on this machine. The history ("2026-12-02" in [bench/history.md](bench/history.md)) takes the read's
transaction apart: `SELECT 1` alone has a p99 of about 2 ms at the same rate, and the tail
grows with the work in each transaction.
"""
    spread = ""
    srv, alone = s.get("patient_read_fixed", {}).get("repeats", []), (pgt.get("read") or {}).get("repeats", [])
    if len(srv) > 1 and len(alone) > 1:
        lo, hi = min(r["p99_ms"] for r in alone), max(r["p99_ms"] for r in alone)
        slo, shi = min(r["p99_ms"] for r in srv), max(r["p99_ms"] for r in srv)
        overlap = (f"The two ranges come within 1.3× of each other, so one run's ratio of medians is as much "
                   "the repetitions' spread as the server's." if slo <= 1.3 * hi else
                   f"Every repetition through the server was above 1.3× PostgreSQL alone's highest "
                   f"({1.3 * hi:.3f} ms): the server's path adds to the tail more than the repetitions vary.")
        spread = f"""
Over this run's repetitions at the read's rate, PostgreSQL alone had a p99 from {lo} to
{hi} ms ({hi / lo:.2f}× between its own lowest and highest), and the read through the
server from {slo} to {shi} ms ({shi / slo:.2f}×); the target is 1.3× between the medians
of the two. {overlap}
"""
    loaded = ""
    lo_t = pgt.get("read_loaded")
    if lo_t and "read" in pgt and "patient_read_fixed" in s and "pgbench_read_loaded_fixed" in cpu \
            and "patient_read_fixed" in cpu and "pgbench_read_fixed" in cpu:
        v = s["patient_read_fixed"]
        ratio = v["p99_ms"] / lo_t["p99_ms"]
        table = [("through the server", "patient_read_fixed", v)] + [
            ("PostgreSQL alone" + (f", {label}" if label else ""), f"pgbench_{k}_fixed", pgt.get(k))
            for k, label in READ_TAILS.items()]
        loaded = f"""
The server's path keeps the machine busier at the same rate than PostgreSQL alone does
(its own CPU, Redis's and oha's on the same two cores), and on two shared cores the tail
may follow how busy they are. So the read's statements ran through pgbench again at the
same rate, with `bench/burn.py` topping the machine up, in short slices as requests do,
to the busy share `/proc/stat` counted through the server:

| the read at {v['rps']}/s | machine busy | p50 / p95 / p99 (ms) |
|---|---|---|
""" + "\n".join(f"| {label} | {cpu[c]['busy_share']:.0%} | {t['p50_ms']} / {t['p95_ms']} / {t['p99_ms']} |"
                for label, c, t in table if t and c in cpu) + f"""

With the machine as busy, PostgreSQL alone's p99 is {lo_t['p99_ms']} ms, and the server's is
{ratio:.2f}× that ({"within" if ratio <= 1.3 else "beyond"} the target's 1.3×): """ + (
            "what the target compares is the load that the server, Redis and the load generator "
            "put on the two cores they share with the database, not the server's path as such."
            if ratio <= 1.3 else
            "the server's path adds to the tail more than its load on the two cores explains.") + "\n"
        tr = pgt.get("read_trips_loaded")
        if tr and "pgbench_read_trips_loaded_fixed" in cpu:
            t_ratio = v["p99_ms"] / tr["p99_ms"]
            loaded += f"""
A read through the server is also more round trips than pgbench's: five against three, so
a process is woken ten times per request against six (`bench/run` counts them). So
`bench/run` also sends `bench/read.sql` between two `SELECT 1` round trips, standing for the
rate limit's and the HTTP request's, at the same rate alone and with the machine as busy.
With as many wake-ups and the machine as busy, PostgreSQL alone's p99 is {tr['p99_ms']} ms
and the server's {t_ratio:.2f}× that: """ + (
                "PostgreSQL alone, in as many round trips on two cores this busy, has as long a tail "
                "as the server or longer." if t_ratio <= 1.0 else
                "within the target's 1.3×." if t_ratio <= 1.3 else
                "the round trips do not account for the server's tail either.") + "\n"
        pl = pgt.get("read_pipelined_loaded")
        if tr and pl and "pgbench_read_pipelined_loaded_fixed" in cpu:
            loaded += f"""
Then it sends the same with the read's transaction in one round trip, as
[proposed below](#postgresql-through-the-server-and-through-pgbench), the two extra round
trips kept: two round trips and four wake-ups fewer. With the machine as busy its p99 in
this run is {pl['p99_ms']} ms against {tr['p99_ms']} ms with the transaction in three round
trips ({pl['p99_ms'] / tr['p99_ms']:.2f}×), and its p50 {pl['p50_ms']} ms against {tr['p50_ms']} ms;
the repetitions of each are listed under "Scenarios".
"""
    parts = [f"{c.replace('patient_', '')}: {cpu[f]['busy_share']:.0%} busy, "
             f"{cpu[f]['switches_per_request']} context switches per request against "
             f"{cpu[c]['switches_per_request']} in the closed loop" for c, f in pairs]
    return f"""### Why the fixed-rate tail varies

Half the closed-loop maximum is not half the machine: a request that arrives alone is
woken alone, and costs more CPU and more context switches than one of 32 in flight, so at
half the rate the machine is far busier than half ({"; ".join(parts)}). At that load,
with the load generator, the server, PostgreSQL and Redis sharing two cores, the 99th
percentile follows how they happen to be scheduled (see "The open-loop tail" and "the
database's own tail" in [bench/history.md](bench/history.md)).
{floor}{spread}{loaded}"""


def profile(o):
    """perf's view of the server during the profiled closed-loop read, when perf could sample."""
    dso = perf_rows(o, "patient_read_profile", "dso", "server")
    top = perf_rows(o, "patient_read_profile", "sym", "server")
    if not dso or not top:
        return "perf could not sample on this machine; no server profile in this run."
    return f"""`perf record -e cpu-clock -a` during a second closed-loop patient read (32 connections),
the server's samples. Share by object:

```
{block(dso, 6)}
```

The top functions (self time):

```
{block(top, 30)}
```"""


def pg_profile(o):
    """PostgreSQL's CPU per request through the server against per transaction through
    pgbench, for the same statements, from perf samples of both closed-loop reads."""
    srv, bench = "patient_read_profile", "pgbench_read_profile"
    ns, nb = completed(o, srv), completed(o, bench)
    tables = {}
    for key in ("dso", "sym"):
        tables[key] = (dict(perf_rows(o, srv, key, "postgres")), dict(perf_rows(o, bench, key, "postgres")))
    if not (ns and nb and tables["dso"][0] and tables["dso"][1]):
        return "perf could not sample PostgreSQL in this run."

    def rows(key, limit):
        a, b = tables[key]
        names = sorted(set(a) | set(b), key=lambda k: -abs(us_per(a.get(k, 0), ns) - us_per(b.get(k, 0), nb)))
        return "\n".join(
            f"| `{k}` | {us_per(a.get(k, 0), ns):.1f} | {us_per(b.get(k, 0), nb):.1f} | {us_per(a.get(k, 0), ns) - us_per(b.get(k, 0), nb):+.1f} |"
            for k in names[:limit])
    total_a = us_per(sum(tables["dso"][0].values()), ns)
    total_b = us_per(sum(tables["dso"][1].values()), nb)
    return f"""`perf record -e cpu-clock -a` during a closed-loop patient read through the server
({ns:,} requests) and during the same statements through pgbench ({nb:,} transactions),
PostgreSQL's backends only, in microseconds of CPU per request (one sample at
{PERF_HZ} Hz is about 1 ms). In all: {total_a:.0f} µs through the server, {total_b:.0f} µs
through pgbench.

By object:

| object | through the server | through pgbench | difference |
|---|---|---|---|
{rows("dso", 8)}

The functions (self time) that differ most:

| function | through the server | through pgbench | difference |
|---|---|---|---|
{rows("sym", 25)}

The parser (`base_yyparse`, `core_yylex`) and the planning of the begin's statement are the
server's alone: it sends `BEGIN`, the two settings and the session check as one simple
query, which PostgreSQL parses and plans on every request, where pgbench sends them
prepared, in one pipeline. sqlx 0.8 has no pipeline of prepared statements, and the
prepared form without one costs a round trip more (`BEGIN`, then the `SELECT`). Measured
apart through pgbench, the begin as one simple query cost PostgreSQL from 0.00 to 0.04 ms
more per request than the prepared pipeline, in three pairs of runs ("sixteenth session"
in [bench/history.md](bench/history.md)). **Proposed, not built:** a pipelined begin, `BEGIN`
and the prepared settings-and-check statement written together under one `Sync`, which
needs either a pipeline in sqlx or a small extension of its connection; the design's
transaction-local clinic setting and session check stay as they are. Where a request's
transaction is one statement (a read, a page), the statement and `COMMIT` can go under the
same `Sync`: the session check raises when the session is no longer valid, and PostgreSQL
then skips the rest up to the `Sync`, so the statement never runs for a revoked session
(the connection must roll the failed transaction back before it returns to the pool), and
a read becomes one round trip to PostgreSQL instead of three. [The fixed-rate tail](#why-the-fixed-rate-tail-varies) measures what the
round trips cost the read's 99th percentile on this machine. The rest of the
closed-loop difference is the rate ("What a request costs": at one rate the two cost
PostgreSQL about the same)."""


def search_profile(o, cpu, s, pg, pgt):
    """Where a name search's CPU goes: the split between the server and PostgreSQL at half
    rate (/proc), and PostgreSQL's objects and functions during the closed-loop search (perf)."""
    n = completed(o, "search_profile")
    dso = perf_rows(o, "search_profile", "dso", "postgres")
    sym = perf_rows(o, "search_profile", "sym", "postgres")
    srv = perf_rows(o, "search_profile", "dso", "server")
    parts = []
    f = cpu.get("search_fixed")
    if f:
        parts.append(
            f"At half the closed-loop rate ({s['search_fixed']['rps']} searches/s) a search cost "
            f"PostgreSQL {f['postgres_ms_per_request']} ms of CPU and the server "
            f"{f['server_ms_per_request']} ms, with the machine {f['busy_share']:.0%} busy: "
            f"the search is PostgreSQL's work (one statement per query word, then the "
            f"patients; see \"Search plan\" at the end for each statement's plan), and its "
            f"p95 is that work plus the wait for a core while other searches hold both.")
    if n and dso and sym:
        us = lambda samples: us_per(samples, n)
        total = us(sum(c for _, c in dso))
        server = us(sum(c for _, c in srv))
        rows = "\n".join(f"| `{k}` | {us(c):.0f} |" for k, c in dso[:6])
        funcs = "\n".join(f"| `{k}` | {us(c):.0f} |" for k, c in sym[:20])
        parts.append(f"""`perf record -e cpu-clock -a` during a second closed-loop search ({n:,} searches at 8
connections): PostgreSQL {total:.0f} µs of CPU per search, the server {server:.0f} µs.
PostgreSQL by object, µs per search:

| object | µs |
|---|---|
{rows}

PostgreSQL's functions (self time), µs per search:

| function | µs |
|---|---|
{funcs}""")
    if "search" in pg or "search" in pgt:
        alone = []
        if "search" in pg:
            alone.append(f"`bench/search.sql` (the same statements through pgbench, 8 connections) ran "
                         f"{pg['search']['tps']:.0f} searches/s against the server's {s['search']['rps']}")
        if "search" in pgt:
            b, v = pgt["search"], s["search_fixed"]
            alone.append(f"at the server's fixed rate ({v['rps']}/s) PostgreSQL alone answered with "
                         f"p50 {b['p50_ms']}, p95 {b['p95_ms']} and p99 {b['p99_ms']} ms, against the "
                         f"server's {v['p50_ms']}, {v['p95_ms']} and {v['p99_ms']} ms")
        parts.append("The database alone: " + "; ".join(alone) + ".")
    if not parts:
        return "No search profile in this run."
    return "\n\n".join(parts)


def treatment_section(s, pg, pgt, cpu, t):
    """The day sheet over a year of data and completing a procedure: what was measured, on
    which data, through the server and through pgbench."""
    ms = lambda v: "–" if v is None else f"{v}"
    wrap = lambda text: textwrap.fill(" ".join(text.split()), 90, break_on_hyphens=False, break_long_words=False)
    row = lambda label, rate, v: f"| {label} | {rate} | {ms(v.get('p50_ms'))} | {ms(v.get('p95_ms'))} | {ms(v.get('p99_ms'))} |"
    parts = []
    if t:
        parts.append(
            f"Clinic 1 (time zone {t['timezone']}) held {t['clinic_appointments']:,} past appointments, "
            f"{t['clinic_completed_procedures']:,} completed procedures (the first on {t['first_completed_on']}) and "
            f"{t['clinic_ledger_transactions']:,} journal transactions with {t['clinic_ledger_lines']:,} lines when "
            f"this run began: `bench/seed.sql` seeds a year of completed procedures, 40 each working day, "
            f"each charged to the journal when its appointment ends, and every earlier run of "
            f"\"complete a procedure\" added its completions, charged on the day it ran.")
        parts[-1] = wrap(parts[-1])
    d, df = s.get("day_sheet"), s.get("day_sheet_fixed")
    if d and df:
        day = (f"{t['day']}, the seeded day with the most appointments ({t['day_appointments']} appointments, "
               f"{t['day_charges']} procedures charged, production {t.get('currency', '')} {t['day_production_cents'] / 100:,.2f}; "
               f"from {t['day_from']} to {t['day_to']})") if t else "the busy day"
        rows = [row("through the server, closed loop, 32 connections", f"{d['rps']}/s", d),
                row("through the server, fixed rate ½ max, latency-corrected (median of the repetitions)", f"{df['rps']}/s", df)]
        if "daysheet" in pg:
            rows.append(f"| `bench/daysheet.sql` through pgbench, closed loop, 32 connections | {pg['daysheet']['tps']:.0f}/s | – | – | – |")
        if "daysheet" in pgt:
            rows.append(row("`bench/daysheet.sql` through `pgbench -R` at the server's fixed rate, the server stopped",
                            f"{df['rps']}/s", pgt["daysheet"]))
        p95 = df["p95_ms"]
        verdict = (f"The target, a day sheet over a clinic with a year of data answering in under 50 ms at p95, "
                   f"is measured at the fixed rate, as the search's is: **p95 {p95} ms, "
                   f"{'under' if p95 < 50 else 'over'} 50 ms** (target {'met' if p95 < 50 else 'missed'}).")
        if "daysheet" in pgt:
            verdict += f" PostgreSQL alone at the same rate: p95 {pgt['daysheet']['p95_ms']} ms."
        verdict += (f" In the closed loop, where 32 requests at a time queue for the two cores, "
                    f"p95 was {d['p95_ms']} ms.")
        c = cpu.get("day_sheet")
        if c:
            verdict += (f" A day sheet cost the server {c['server_ms_per_request']} ms of CPU and PostgreSQL "
                        f"{c['postgres_ms_per_request']} ms in the closed loop"
                        + (f" ({cpu['pgbench_daysheet']['postgres_ms_per_request']} ms through pgbench)"
                           if "pgbench_daysheet" in cpu else "") + ".")
        parts.append(wrap(f"""**The day sheet** of {day}: `GET /api/v2/reports/day-sheet?date=…` as the owner. Its
three queries read the day's appointments by status (index `appointments_calendar`), the
day's journal in one pass (`ledger_transactions_posted`, then each transaction's lines) and
the patients registered in the day (`patients_created`); the clinic's time zone comes from
the cache. `bench/daysheet.sql` sends the same statements. Latencies in ms:""") + """

| run | rate | p50 | p95 | p99 |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n\n" + wrap(verdict))
    k = s.get("complete")
    if k:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(k["statuses"].items()))
        pool = (f" of the {t['planned_for_each']:,} that bench/run listed for it ({t['planned_left_before']:,} "
                f"left planned by earlier runs, {t['planned_for_each'] - t['planned_left_before']:,} inserted "
                f"before this run)") if t else ""
        text = f"""**Completing a procedure**: `POST /api/v2/procedures/{{id}}/complete` with the body `{{}}`
from wrk (`bench/scenarios/complete.lua`, 32 connections), signed in as dentist1, the
provider the planned procedures name (the seed's owner is no provider, so holds no
`treatment.write`), each request a different planned procedure{pool}. Each completion is
one transaction: the procedure locked and read with its code, the provider's standing, the
update, the charge and its two journal lines, the procedure read again, the audit event,
and at COMMIT the journal's deferred balance trigger, once for the charge and once for
each line. The server completed {k['rps']}/s, p50 {ms(k['p50_ms'])}, p95 {ms(k['p95_ms'])},
p99 {ms(k['p99_ms'])} and p99.9 {ms(k['p999_ms'])} ms (responses: {codes})."""
        if "complete" in pg:
            b = pg["complete"]
            text += f"""

`bench/complete.sql` sends the same statements through pgbench (32 connections):
{b['tps']:.0f} completions/s, {k['rps'] / b['tps']:.0%} of which the server reached. It differs
from the server's request in three ways: the lock's statement spells the procedure's id from
a number (each client completes its own stripe of planned procedures that bench/run
inserted fresh, so every transaction completes a different one, as each of the server's
requests does, and finds it by id, as the server does); the charge's id is derived from the
procedure's rather than a UUIDv7 made by the server; the audit event's details are built by
`jsonb_build_object` rather than bound."""
            if "aborted" in b:
                text += (f" **This run's pgbench failed** ({b.get('failed')} failed transactions): "
                         + "; ".join(f"`{line.strip()}`" for line in b["aborted"]) + ".")
        c, cb = cpu.get("complete"), cpu.get("pgbench_complete")
        if c:
            text += (f" A completion cost the server {c['server_ms_per_request']} ms of CPU and PostgreSQL "
                     f"{c['postgres_ms_per_request']} ms through the server"
                     + (f", PostgreSQL {cb['postgres_ms_per_request']} ms through pgbench" if cb else "") + ".")
        parts.append("\n\n".join(wrap(p) for p in text.split("\n\n")))
    return "\n\n".join(parts) if parts else "No treatment scenarios in this run."


def payment_section(s, pg, cpu, books, family_plan, abandoned, currency):
    """Posting a payment: through the server and through pgbench, what a payment costs, the
    payer's family lookup, and the books checked after each run."""
    k = s.get("pay")
    if not k:
        return "No payment scenario in this run."
    ms = lambda v: "–" if v is None else f"{v}"
    wrap = lambda text: textwrap.fill(" ".join(text.split()), 90, break_on_hyphens=False, break_long_words=False)
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(k["statuses"].items()))
    parts = [f"""`POST /api/v2/payments` from wrk (`bench/scenarios/pay.lua`, 64 connections), signed in as
the owner (who holds `ledger.write`), each request a payment of 10.00 to 59.00 by cash,
card, bank transfer or check for one of a hundred patients of clinic 1 in turn, with no
allocations (the whole amount becomes the payer's credit), under an `Idempotency-Key` of
its own. A payment is two transactions, each opened with the session check: the key's
claim (expired claims of the key deleted, the key inserted), then the work: the payer
looked up, the payer's family (see below), the journal transaction and its two lines
(the method's account debited, the payer's credit credited), the payment, the (empty)
allocations, the audit event, the payment read back with its allocations and refunds, the
key completed with the response, and at COMMIT the journal's deferred balance trigger,
once for the transaction and once for each line. The server took {k['rps']} payments/s,
p50 {ms(k['p50_ms'])}, p95 {ms(k['p95_ms'])}, p99 {ms(k['p99_ms'])} and p99.9
{ms(k['p999_ms'])} ms (responses: {codes})."""]
    parts[0] = wrap(parts[0])
    if "pay" in pg:
        b = pg["pay"]
        text = f"""`bench/pay.sql` sends the same statements through pgbench (64 connections, run after
the server stopped, since its pool and pgbench's 64 connections would not fit under
PostgreSQL's 100): {b['tps']:.0f} payments/s, {k['rps'] / b['tps']:.0%} of which the server
reached. It differs from the server's request in that the payer's id is spelled from a
number in the lookup (client c pays for the same hundred patients in turn) and the later
statements use the id it returns; the journal transaction's and the payment's ids are
UUIDv7 made by the INSERT and returned to pgbench rather than made by the server; the
lines' arrays and the empty allocations are written in the statements rather than bound;
every payment is by card; the key is a number and the request hash one constant; the
audit event's id is random rather than a UUIDv7; the stored response and the audit details
are built by `jsonb_build_object` rather than bound."""
        if "aborted" in b:
            text += (f" **This run's pgbench failed** ({b.get('failed')} failed transactions): "
                     + "; ".join(f"`{line.strip()}`" for line in b["aborted"]) + ".")
        c, cb = cpu.get("pay"), cpu.get("pgbench_pay")
        if c:
            text += (f" A payment cost the server {c['server_ms_per_request']} ms of CPU and PostgreSQL "
                     f"{c['postgres_ms_per_request']} ms through the server"
                     + (f", PostgreSQL {cb['postgres_ms_per_request']} ms through pgbench" if cb else "") + ".")
        if k["rps"] > b["tps"]:
            text += (" The server passed pgbench here, so pgbench's figure is no ceiling: both are bound by "
                     "the payer's family lookup below, tens of milliseconds of PostgreSQL's CPU per payment on "
                     "two cores; pgbench runs it in 64 backends at once where the server's pool runs at most "
                     "32, and separate 15 s runs of either varied by a fifth (see run L in "
                     "[bench/history.md](bench/history.md)).")
        parts.append(wrap(text))
    if family_plan.strip():
        removed = re.search(r"Rows Removed by Filter: (\d+)", family_plan)
        took = re.search(r"Execution Time: ([0-9.]+) ms", family_plan)
        scan = re.search(r"^\s*(?:->\s*)?((?:Index|Bitmap|Seq)[^\n(]*?)\s*(?:\(|$)", family_plan, re.M)
        lines = "\n".join(l for l in family_plan.splitlines() if l.strip())
        if removed and int(removed.group(1)) >= 1000:
            verdict = (f"It reads the clinic's patients one by one ({scan.group(1).strip() if scan else 'a scan'}, "
                       f"{int(removed.group(1)):,} rows removed by the filter"
                       + (f", {took.group(1)} ms" if took else "") + "): `patients` has no index on "
                       "`responsible_party_id`, so the `OR` cannot be answered from an index. This is the "
                       "server's cost, not the benchmark's, and it grows with the clinic; an index on "
                       "`(clinic_id, responsible_party_id)` (or skipping the lookup when there are no "
                       "allocations) would remove it ([bench/history.md](bench/history.md), run L, measures "
                       "such an index). The same condition is in the family balance of "
                       "`GET /patients/{id}/balance`.")
        else:
            verdict = ("It is answered from indexes" + (f" in {took.group(1)} ms" if took else "") + ".")
        parts.append(wrap("""**The payer's family.** Every payment, with allocations or without, first asks for
the payer's family (`SELECT id FROM patients WHERE id = $1 OR responsible_party_id = $1`, in
`check_allocations`). Its plan as the server's role sees it, after the runs:""") + f"""

```
{lines}
```

""" + wrap(verdict))
    if books:
        rows = []
        for key, label in (("pay", "through the server"), ("pgbench_pay", "through pgbench")):
            c = books.get(key)
            if not c:
                continue
            answered = f"{c['answered']:,} answered 201" if key == "pay" else f"{c['answered']:,} pgbench transactions"
            rows.append(f"| {label} | {c['payments']:,} ({answered}) | {c['patients']} | "
                        f"{c['paid_cents'] / 100:,.2f} | {c['balance_not_entries']} | {c['balance_not_before_less_paid']} | "
                        f"{c['payments_misposted']} | {c['payments_without_key'] + c['keys_without_payment']} | "
                        f"{c['unbalanced_transactions']} of {c['journal_transactions']:,} | "
                        f"{'**yes**' if c['ok'] else '**no**'} |")
        ok = all(c["ok"] for c in books.values())
        head = ("**The books add up.**" if ok else "**THE BOOKS DO NOT ADD UP**: " + "; ".join(
            p for c in books.values() for p in c["problems"]) + ".")
        text = head + """ After each run of payments `bench/run` checks, as the admin and in one snapshot,
that for every patient touched the balance (their receivable and credit lines, as
`GET /patients/{id}/balance` sums them) equals the sum of their ledger entries (one per
journal transaction, as `GET /patients/{id}/ledger` lists them) and equals their balance
before the run less what the run's payments paid; that every payment of the run is
posted as a journal transaction of exactly its two lines (the method's account debited
and the payer's credit credited with its amount) and has its `Idempotency-Key` completed
with a 201 naming it; that every journal transaction of every clinic sums to zero
(`SELECT transaction_id FROM ledger_lines GROUP BY 1 HAVING sum(amount_cents) <> 0` is
empty); and that the payments recorded are at least the 201 answers and at most those plus
the 64 connections (requests in flight when the load generator stopped commit without an
answer it reads). The run stops with an error when any of this fails."""
        table = f"""| run | payments recorded | patients | paid{f' ({currency})' if currency else ''} | balance ≠ entries | balance ≠ before − paid | misposted | payment without its key | unbalanced journal transactions | adds up |
|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows)
        parts.append(wrap(text) + "\n\n" + table)
        c = books.get("pay")
        if c and abandoned is not None:
            parts.append(wrap(
                f"""When wrk stopped, {c['payments'] - c['answered']} of the server's payments had committed
without wrk reading their answer, and {abandoned} keys the server had claimed were still
unfinished after the server stopped: those requests were cut off between the key's claim and
the work's commit when wrk closed its connections, and the server dropped them without
releasing the claim (`idempotency::run` releases a key only when the work returns an
error). A client that retries such a request with the same key is answered 409 ("still in
progress") until the claim expires after 10 minutes."""
                if abandoned else
                f"""When wrk stopped, {c['payments'] - c['answered']} of the server's payments had committed
without wrk reading their answer; no key the server claimed was left unfinished."""))
    return "\n\n".join(parts)


def documents(path):
    """The documents scenario (bench/run's documents_run): medians of the 50 MB uploads,
    downloads, `cat` and `cp` in MB/s (MB of 2^20 bytes), and the peak RSS that a 200 MB
    upload and its download added to the server's RSS just before; None without it."""
    if not os.path.exists(path):
        return None
    d = json.load(open(path))
    mb = d["file_mb"]
    runs = d["runs"]
    # A download counts when it answered 200 with every byte (a stream cut short after
    # the status line answers 200 too).
    whole = lambda key, r: key != "download" or r.get("download_bytes") == mb * 1048576
    rate = lambda key, ok: [round(mb / r[f"{key}_s"], 1) for r in runs
                            if r.get(f"{key}_s") and (ok is None or r.get(f"{key}_status") == ok) and whole(key, r)]
    med = lambda v: round(statistics.median(v), 1) if v else None
    each = {"upload": rate("upload", 201), "download": rate("download", 200), "cat": rate("cat", None),
            "cp": rate("cp", None)}
    out = {"file_mb": mb, "repeats": len(runs)}
    for k, v in each.items():
        out[f"{k}_mb_s"] = med(v)
        out[f"{k}_mb_s_each"] = v
    statuses = {}
    for r in runs:
        for k in ("upload_status", "download_status"):
            statuses[str(r[k])] = statuses.get(str(r[k]), 0) + 1
    shares = lambda key: [r[key] for r in runs if r.get(key) is not None]
    out["file_cached_share"] = shares("file_cached_share")
    out["stored_cached_share"] = shares("stored_cached_share")
    for name, ok in (("upload_200", 201), ("download_200", 200)):
        p = d[name]
        statuses[str(p["status"])] = statuses.get(str(p["status"]), 0) + 1
        rise = (p["peak_kb"] - p["rss_before_kb"]) / 1024
        out[name] = {
            "status": p["status"], "seconds": p["seconds"],
            "mb_s": round(d["big_file_mb"] / p["seconds"], 1) if p["seconds"] and p["status"] == ok else None,
            "rss_before_mb": round(p["rss_before_kb"] / 1024, 1), "peak_mb": round(p["peak_kb"] / 1024, 1),
            "rss_after_mb": round(p["rss_after_kb"] / 1024, 1), "peak_rise_mb": round(rise, 1),
            "server_cpu_s": p.get("server_cpu_s"), "context_switches": p.get("context_switches"),
            # clear_refs may be refused (it then leaves the lifetime peak): the peak right
            # after the reset is above the RSS, and the rise measures nothing.
            "peak_reset": p["peak_at_reset_kb"] - p["rss_before_kb"] < 1024,
            "met": p["status"] == ok and rise < 16 and p["peak_at_reset_kb"] - p["rss_before_kb"] < 1024,
        }
    out["download_200"]["stored_bytes"] = d["download_200"].get("stored_bytes")
    out["download_200"]["stored_cached_share"] = d["download_200"].get("stored_cached_share")
    out["statuses"] = statuses
    out["deleted"] = d.get("deleted", {})
    out["purge"] = [line for line in d.get("purge", []) if line.strip() and not line.startswith("{")]
    return out


def documents_section(doc):
    """Uploading and downloading documents through the server next to `cat` and `cp` of the
    same file, and the peak RSS of a 200 MB upload and download."""
    if not doc:
        return "No documents scenario in this run."
    wrap = lambda text: textwrap.fill(" ".join(text.split()), 90, break_on_hyphens=False, break_long_words=False)
    fmt = lambda v: "–" if v is None else f"{v}"
    each = lambda v: ", ".join(str(x) for x in v) or "–"
    count = lambda v: "–" if v is None else f"{v:,}"
    pct = lambda v: "not known" if not v else (f"{min(v):.0%}" if min(v) == max(v) else f"{min(v):.0%} to {max(v):.0%}")
    codes = ", ".join(f"{c}: {n}" for c, n in sorted(doc["statuses"].items()))
    up, down = doc["upload_200"], doc["download_200"]
    rows = "\n".join(
        f"| {label} | {fmt(doc[f'{k}_mb_s'])} | {each(doc[f'{k}_mb_s_each'])} |" for label, k in (
            ("upload through the server (`POST /api/v2/patients/{id}/documents`)", "upload"),
            ("download through the server (`GET /api/v2/documents/{id}/content`)", "download"),
            ("`cat` of the file to `/dev/null`", "cat"),
            ("`cp` of the file into the storage folder", "cp")))
    intro = wrap(f"""A {doc['file_mb']} MB file (MB here are 2^20 bytes: the PNG signature, then random
bytes) uploaded with curl as the owner (`multipart/form-data`, `kind=xray`, one request at a
time), the document then downloaded with curl, the file read with `cat` to `/dev/null` and
copied with `cp` into the storage folder (`MEDICAL_RECORDS_STORAGE_PATH`, local files under
`bench/.cache/records`), {doc['repeats']} times in turn, all on the same disk. The server
ran with a `FILE_ENCRYPTION_KEY` made for the run and `MAX_UPLOAD_MB=256`. Throughput is the
file's size over curl's total time (or the command's), median and each repetition (responses:
{codes}):""")
    cache = wrap(f"""No cache was dropped (that needs root and would disturb PostgreSQL): before each
`cat`, {pct(doc['file_cached_share'])} of the file's pages were in the page cache, and before each
download {pct(doc['stored_cached_share'])} of the stored object's (`mincore`), so both sides read
from memory, not the disk; the upload and `cp` write into the page cache, which the kernel
writes back later. The difference is the server's work: an upload parses the multipart body,
hashes every byte (SHA-256) and seals it in 64 KiB chunks (XChaCha20-Poly1305) before
writing it in 1 MiB parts; a download authenticates every chunk before it sends the first
byte and then reads and decrypts the object again as it streams, so it reads the stored
object twice.""")
    rise = lambda p: (f"**{p['peak_rise_mb']} MB, {'under' if p['met'] else 'not under'} 16 MB**"
                      + ("" if p["peak_reset"] else " (the peak could not be reset: this is no measurement)"))
    rss_rows = "\n".join(
        f"| {label} | {p['status']} | {p['seconds']:.2f} s ({fmt(p['mb_s'])} MB/s) | {p['rss_before_mb']} | "
        f"{p['peak_mb']} | {p['peak_rise_mb']} | {p['rss_after_mb']} | {'yes' if p['met'] else 'no'} | "
        f"{fmt(p['server_cpu_s'])} | {count(p['context_switches'])} |"
        for label, p in (("200 MB upload", up), ("its download", down)))
    stored = (f" The 200 MB document was stored as {int(down['stored_bytes']):,} bytes (a 28-byte header "
              f"and a 16-byte tag per 64 KiB chunk), {pct([down['stored_cached_share']] if down['stored_cached_share'] is not None else [])} "
              f"of it in the page cache before the download.") if down.get("stored_bytes") else ""
    if up.get("server_cpu_s") is not None and down.get("server_cpu_s") is not None:
        stored += (f" The upload took {up['server_cpu_s']} s of the server's CPU while the machine switched "
                   f"context {count(up['context_switches'])} times; the download {down['server_cpu_s']} s and "
                   f"{count(down['context_switches'])} times.")
    rss = wrap(f"""**Memory.** The target: a 200 MB upload raises the server's peak RSS by less than
16 MB. Just before each request `bench/run` resets the peak (`echo 5 >
/proc/<pid>/clear_refs`, which sets VmHWM to the current RSS) and reads VmRSS; after it, it reads
VmHWM. These two run first, before any other document has passed through the server. The
upload raised the peak by {rise(up)}; its download (the same bound applied) by {rise(down)}.{stored}""")
    gone = ", ".join(f"{c}: {n}" for c, n in sorted(doc["deleted"].items())) or "none"
    tail = wrap(f"""Afterwards every document the run uploaded was deleted (`DELETE
/api/v2/documents/{{id}}`; responses: {gone}) and purged (`molar documents purge --before`
tomorrow: {'; '.join(doc['purge']) or 'no output'}), so the storage folder does not grow from run
to run and no document outlives the run's key.""")
    return f"""{intro}

| | MB/s, median | each repetition |
|---|---|---|
{rows}

{cache}

{rss}

| request | status | time | RSS before (MB) | peak (MB) | rise (MB) | RSS after (MB) | rise < 16 MB | server CPU (s) | context switches (machine) |
|---|---|---|---|---|---|---|---|---|---|
{rss_rows}

{tail}"""


CEILING = "[the ceiling fraction](#why-the-ceiling-fraction-is-what-it-is)"
DAYSHEET = "[the day sheet](#completing-a-procedure-and-the-day-sheet)"
TAIL = "[the fixed-rate tail](#why-the-fixed-rate-tail-varies)"
SEARCH = "[a search's time](#where-a-searchs-time-goes)"
DOCUMENTS = "[documents](#documents)"


OUTBOX = "[The outbox under the booking load](#the-outbox-under-the-booking-load)"


def outbox_section(ob, s):
    if not ob:
        return "Not measured in this run."
    spread = s["book_spread"]["rps"]
    return f"""While the two booking scenarios run, clinic 1 has a webhook subscription to `appointment.*`
at a local receiver (`bench/receiver.py`, one Python process answering 204): each booking
writes its event to the outbox in the booking's own transaction, and the server's outbox
worker claims events with `FOR UPDATE SKIP LOCKED`, signs and `POST`s each one, and records
the delivery. Lag is from the event's row being written to its delivery being recorded,
read from the outbox table after the load; the booking figures above include this work.

| figure | value |
|---|---|
| bookings answered 201 (both scenarios; a booking still in flight when the load generator stopped commits unanswered) | {ob['bookings']} |
| events written / delivered / failed / left undelivered | {ob['events']} / {ob['delivered']} / {ob['failed']} / {ob['undelivered']} |
| events that needed more than one attempt | {ob['retried']} |
| successful deliveries in the delivery log (one per event when none was sent twice) | {ob['successful_attempts']} |
| load | {ob['load_seconds']} s (bookings at {spread}/s in the spread scenario) |
| events written per second (first to last) | {ob['written_per_s']} |
| deliveries per second (first event to last delivery) | {ob['delivered_per_s']} |
| lag p50 / p95 / p99 / max | {ob['lag_p50_ms']} / {ob['lag_p95_ms']} / {ob['lag_p99_ms']} / {ob['lag_max_ms']} ms |
| last delivery after the load ended | {ob['drained_after_load_ms']} ms |
"""


SEALING = "[sealing the audit trail](#sealing-the-audit-trail)"


SERVER_CPU = "[the server's CPU per request](#where-the-servers-cpu-per-request-goes)"


# The section of BENCHMARKS.md, computed from the same run, that shows why a figure of
# "What a request costs" is where it is, by the figure's opening words.
COST_WHY = [
    ("PostgreSQL CPU per patient read", "[through the server and through pgbench](#postgresql-through-the-server-and-through-pgbench)"),
    ("server CPU per patient read", SERVER_CPU),
    ("all CPU per read", CEILING),
    ("server CPU per page", SERVER_CPU),
    ("PostgreSQL CPU per page of 50 through pgbench", "[the page's SQL](#what-the-pages-sql-is-made-of)"),
    ("patient read, fraction", CEILING),
    ("read p99", TAIL),
    ("name search", SEARCH),
    ("longest single sealing", SEALING),
]


def cost_why(figure):
    return next((why for start, why in COST_WHY if figure.startswith(start)), "")


def sealing(o):
    """The sealing round a second process ran halfway through the spread bookings, and the
    server's own rounds over the whole run (from /metrics at the end)."""
    out = {}
    path = f"{o}/seal_during_booking.txt"
    if os.path.exists(path):
        m = re.search(r"sealed (\d+) event\(s\) in (\d+) seal\(s\), (\d+) transaction\(s\), the longest ([0-9.]+) ms"
                      r"(?:, the first ([0-9.]+) ms)?(?:, after a warm-up of ([0-9.]+) ms)?"
                      r"(?:; the longest spent ([0-9.]+) ms on a core and ([0-9.]+) ms waiting for one; "
                      r"the most any spent on a core ([0-9.]+) ms)?", open(path).read())
        if m:
            out["booking"] = {"events": int(m[1]), "seals": int(m[2]), "transactions": int(m[3]),
                              "longest_ms": float(m[4])}
            if m[5]:
                out["booking"]["first_ms"] = float(m[5])
            if m[6]:
                out["booking"]["warm_up_ms"] = float(m[6])
            if m[7]:
                out["booking"].update(longest_on_core_ms=float(m[7]), longest_waiting_ms=float(m[8]),
                                      most_on_core_ms=float(m[9]))
    # pgbench's per-transaction log: client, transaction, latency (µs), script, epoch, µs.
    # pgbench reads its clock lazily, so a short transaction's own latency can be logged as
    # 0; one client back to back, each transaction's time is the gap between consecutive
    # completions instead.
    # The two scripts (0: nothing, 1: its commit record only) are told apart by the later
    # transaction of each pair.
    logs = [f for f in glob.glob(f"{o}/trivial.*") if not f.endswith(".txt")]
    ends = sorted((int(v[4]) * 1_000_000 + int(v[5]), v[3]) for f in logs for line in open(f)
                  if len(v := line.split()) >= 6)
    for script, name in (("0", "trivial"), ("1", "trivial_write")):
        lat = sorted((b - a) / 1000 for (a, _), (b, s) in zip(ends, ends[1:]) if s == script)
        if lat and "booking" in out:
            out["booking"][name] = {"count": len(lat), "p50_ms": round(lat[len(lat) // 2], 3),
                                    "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
                                    "max_ms": round(lat[-1], 1)}
    path = f"{o}/seal_metrics.txt"
    if os.path.exists(path):
        metrics = {}
        for line in open(path):
            name, _, value = line.strip().rpartition(" ")
            metrics[name] = float(value)
        longest = metrics.get("audit_seal_transaction_longest_seconds")
        count = metrics.get("audit_seal_transaction_seconds_count")
        if longest is not None and count is not None:
            buckets = sorted((float(re.search(r'le="([^"]+)"', k)[1]), v) for k, v in metrics.items()
                             if k.startswith("audit_seal_transaction_seconds_bucket") and 'le="+Inf"' not in k)
            out["run"] = {"transactions": int(count), "longest_ms": round(longest * 1000, 1),
                          "mean_ms": round(1000 * metrics.get("audit_seal_transaction_seconds_sum", 0) / count, 2) if count else 0,
                          "within_ms": {f"{b * 1000:g}": int(v) for b, v in buckets}}
    return out


def sealing_section(seal):
    if not seal:
        return "Not measured in this run."
    rows = []
    if "booking" in seal:
        b = seal["booking"]
        parts = []
        if "longest_on_core_ms" in b:
            parts.append(f"{b['longest_on_core_ms']} ms of it on a core and {b['longest_waiting_ms']} ms waiting for one; "
                         f"no transaction more than {b['most_on_core_ms']} ms on a core")
        if "first_ms" in b:
            parts.append(f"the first {b['first_ms']} ms")
        if "warm_up_ms" in b:
            parts.append(f"the call that opens the round on its new connection, sealing nothing, {b['warm_up_ms']} ms")
        first = f" ({'; '.join(parts)})" if parts else ""
        rows.append(f"| one round by a second process, halfway through the spread bookings | {b['events']} | "
                    f"{b['transactions']} | {b['longest_ms']} ms{first} |")
    if "run" in seal:
        r = seal["run"]
        rows.append(f"| the server's own rounds, every minute, over the whole run | – | {r['transactions']} | "
                    f"{r['longest_ms']} ms (mean {r['mean_ms']} ms) |")
    for name, what in (("trivial", "an empty transaction (`BEGIN; SELECT 1; COMMIT`)"),
                       ("trivial_write", "a transaction that writes only its commit record (`SELECT txid_current()`)")):
        t = seal.get("booking", {}).get(name)
        if t:
            rows.append(f"| beside it, for comparison, at random with the other on one connection: {what} | – | "
                        f"{t['count']} | {t['max_ms']} ms (p50 {t['p50_ms']}, p99 {t['p99_ms']} ms) |")
    verdict = ""
    b = seal.get("booking", {})
    empties = [b[k]["max_ms"] for k in ("trivial", "trivial_write") if b.get(k)]
    if "longest_ms" in b and b["longest_ms"] >= 20 and empties and max(empties) >= 20:
        verdict = (f"\n\nThe longest sealing transaction ({b['longest_ms']} ms) missed its target of 20 ms, and "
                   f"so did the longest of the next-to-empty transactions on one connection beside it ({max(empties)} ms): "
                   "on this machine, under this load, a transaction's longest time is set by the scheduling "
                   "of the shared cores, not by the work in it."
                   + (f" The sealing transaction that took longest spent {b['longest_on_core_ms']} ms of it on a core."
                      if "longest_on_core_ms" in b else ""))
    within = ""
    if "run" in seal:
        within = "\n\nThe server's sealing transactions by duration (at most, cumulative): " + ", ".join(
            f"{k} ms: {v}" for k, v in seal["run"]["within_ms"].items()) + "."
    return f"""Every minute the server seals the audit events older than the settle time into each
clinic's hash chain, in short transactions bounded in events, clinics and time
([docs/tenancy.md](docs/tenancy.md#audit-trail) gives the bounds). Each transaction is one statement
sent outside an explicit transaction, timed from sending it to its result, the commit
included. Each round opens with a call that seals nothing, so that on a connection that
has not sealed before compiling and planning fall outside the transactions that hash
events; the second process's round shows it apart, and the server's own rounds count it
among their transactions. The second process (`molar audit seal --each`) also splits each
transaction's time between its backend running on a core and waiting in the run queue for
one (`/proc/<pid>/schedstat`).

| sealing | events | transactions | longest |
|---|---|---|---|
{chr(10).join(rows)}{verdict}{within}
"""


def pg_link(mode, host):
    """How the server and pgbench reach PostgreSQL, in words."""
    if host.startswith("/"):
        return (f"The server and pgbench reach PostgreSQL over its Unix socket (`host={host}`,\n"
                "  as [DEPLOYMENT.md](DEPLOYMENT.md#7-connections-pool-sizing-and-pgbouncer) advises for a database on the same host).")
    if mode == "disable":
        return ("The server and pgbench reach PostgreSQL over loopback TCP without TLS (`sslmode=disable`).")
    return (f"The server and pgbench reach PostgreSQL over loopback TCP with `sslmode={mode}` (TLS when\n"
            "  PostgreSQL offers it).")


def five_xx(s):
    return sum(v for k, v in s["statuses"].items() if k.startswith("5"))


PLAN_NODE = re.compile(r"^(Limit|Aggregate|Result|Function Scan|Sort|HashAggregate|GroupAggregate|"
                       r"Nested Loop|Hash Join|Merge Join|Index|Bitmap|Seq Scan|Append|Subquery Scan|Unique)")


def search_plan(path):
    """auto_explain's log of the search: each statement's first line and its plan, without
    the rest of the statement's text."""
    if not os.path.exists(path):
        return ""
    out, in_text = [], False
    for line in open(path).read().splitlines():
        if "LOG:  duration:" in line:
            out.append("")
            out.append(line.split("LOG:  ", 1)[1])
            in_text = False
        elif line.startswith("Query Text:"):
            out.append(line[:110] + (" …" if len(line) > 110 else ""))
            in_text = True
        elif in_text and PLAN_NODE.match(line):
            in_text = False
            out.append(line)
        elif not in_text and out:
            out.append(line)
    return "\n".join(out).strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out"); ap.add_argument("results"); ap.add_argument("markdown")
    ap.add_argument("--startup-ms", type=int); ap.add_argument("--idle-rss-kb", type=int)
    ap.add_argument("--seconds", type=int)
    ap.add_argument("--at", help="the run's stamp, when a kept run's output is reported again")
    a = ap.parse_args()
    o = a.out
    a_seconds = a.seconds
    rss = lambda n: int(open(f"{o}/{n}.rss").read().strip() or 0) / 1024
    s = {}
    for name in ["health", "patient_read", "patient_read_fixed", "patient_read_256", "patient_list",
                 "patient_list_fixed", "patient_list_256", "search", "search_fixed", "day_sheet",
                 "day_sheet_fixed", "health_during_login"]:
        s[name] = oha_repeated(o, name)
    for name in ["book_spread", "book_contended", "complete", "pay", "login_flood"]:
        s[name] = wrk(f"{o}/{name}.txt")
    for name in s:
        if os.path.exists(f"{o}/{name}.rss"):
            s[name]["peak_rss_mb"] = round(rss(name), 1)
    pg = {k: pgbench_repeated(o, k) for k in ["read", "list", "search", "daysheet", "complete", "pay"]
          if k in ("read", "list") or os.path.exists(f"{o}/pgbench_{k}.txt")}
    cpu = {}
    runs = [("patient_read", None), ("patient_read_fixed", None), ("patient_list", None),
            ("patient_list_fixed", None), ("search_fixed", None), ("day_sheet", None),
            ("complete", None), ("pay", None), ("pgbench_read", "read"), ("pgbench_list", "list"),
            ("pgbench_daysheet", "daysheet"), ("pgbench_complete", "complete"),
            ("pgbench_pay", "pay"), ("pgbench_read_fixed", "at_rate"),
            ("pgbench_list_fixed", "at_rate"), ("pgbench_read_same", "at_rate")]
    runs += [(f"pgbench_{k}_fixed", "at_rate") for k in READ_TAILS if k != "read"]
    for name, requests in runs:
        if requests not in (None, "at_rate") and requests not in pg:
            continue
        # The closed-loop read and page run as pairs, several times in turn
        # (<name>_r<i>.cpu, beside <name>_r<i>.json or pgbench_<script>_r<i>.txt): the
        # median of each figure over the repetitions.
        reps = sorted(glob.glob(f"{o}/{name}_r*.cpu")) if requests != "at_rate" else []
        if reps:
            runs = []
            for path in reps:
                stem = path[:-len(".cpu")]
                count = (oha(f"{stem}.json")["rps"] if requests is None else pgbench(f"{stem}.txt")["tps"]) * a_seconds
                runs.append(cpu_entry(path, count, a_seconds))
            cpu[name] = {k: round(statistics.median(r[k] for r in runs), 3)
                         for k in runs[0] if all(r.get(k) is not None for r in runs)}
            cpu[name]["repeats"] = len(runs)
            continue
        path = f"{o}/{name}.cpu"
        if not os.path.exists(path):
            continue
        if requests is None:
            count = s[name]["rps"] * a_seconds
        elif requests == "at_rate":  # pgbench -R, its summary in a directory of its own
            count = processed(f"{o}/{name}_r1/summary.txt") or processed(f"{o}/{name}/summary.txt")
        else:
            count = pg[requests]["tps"] * a_seconds
        # pgbench -R runs a second longer than the scenarios: its first is left out of its tail.
        cpu[name] = cpu_entry(path, count, a_seconds + (requests == "at_rate"))
    ip = in_process(o, a_seconds)
    parts = page_parts(o, a_seconds)
    plan = search_plan(f"{o}/search_plan.txt")
    pgt = {k: v for k in ("list", "search", "daysheet", *READ_TAILS) if (v := pg_tail(o, k))}
    treatment = json.load(open(f"{o}/treatment.json")) if os.path.exists(f"{o}/treatment.json") else {}
    books = {k: json.load(open(f"{o}/{k}.check.json")) for k in ("pay", "pgbench_pay")
             if os.path.exists(f"{o}/{k}.check.json")}
    family_plan = open(f"{o}/pay_family_plan.txt").read() if os.path.exists(f"{o}/pay_family_plan.txt") else ""
    abandoned = int(open(f"{o}/pay.abandoned").read().strip() or 0) if os.path.exists(f"{o}/pay.abandoned") else None
    doc = documents(f"{o}/documents.json")
    outbox = json.load(open(f"{o}/outbox.json")) if os.path.exists(f"{o}/outbox.json") else None
    seal = sealing(o)
    if outbox:
        outbox["bookings"] = sum(s[k]["statuses"].get("201", 0) for k in ("book_spread", "book_contended"))

    machine = {
        "cpu": sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor(),
        "cores": os.cpu_count(),
        "memory": sh("free -h | awk '/Mem:/ {print $2}'"),
        "kernel": platform.release(),
        "postgresql": sh("psql --version"),
        "redis": sh("redis-server --version"),
        "rustc": sh("rustc --version"),
        "molar": sh("grep -m1 '^version' Cargo.toml | cut -d'\"' -f2"),
        "oha": sh("bench/.cache/bin/oha --version"),
        "wrk": sh("wrk -v 2>&1 | head -1"),
        # bench/run sets it for the server (sqlx reads it too), pgbench and psql alike.
        "pg_sslmode": os.environ.get("PGSSLMODE", "prefer"),
        # Set by bench/run: PostgreSQL's socket directory, or a TCP host.
        "pg_host": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
    }
    read_frac = s["patient_read"]["rps"] / pg["read"]["tps"]
    list_frac = s["patient_list"]["rps"] / pg["list"]["tps"]
    peak_read = max(s["patient_read_256"]["peak_rss_mb"], s["patient_list_256"]["peak_rss_mb"])
    total_5xx = sum(five_xx(v) for v in s.values()) + (five_xx(doc) if doc else 0)
    alone = lambda k: f" (PostgreSQL alone at that rate: {pgt[k]['p99_ms']} ms)" if k in pgt else ""
    targets = [
        ("Patient read ≥ 80% of the pgbench ceiling (32 connections)", f"{read_frac:.0%}", read_frac >= 0.8, CEILING),
        ("Patient list ≥ 80% of the pgbench ceiling (32 connections)", f"{list_frac:.0%}", list_frac >= 0.8, CEILING),
        ("Patient read p99 < 10 ms at half the maximum rate", f"{s['patient_read_fixed']['p99_ms']} ms{alone('read')}", s["patient_read_fixed"]["p99_ms"] < 10, TAIL),
        ("Patient list p99 < 10 ms at half the maximum rate", f"{s['patient_list_fixed']['p99_ms']} ms{alone('list')}", s["patient_list_fixed"]["p99_ms"] < 10, TAIL),
        ("Search in the 100,000-patient clinic p95 < 20 ms", f"{s['search_fixed']['p95_ms']} ms"
         + (f" (PostgreSQL alone at that rate: {pgt['search']['p95_ms']} ms)" if "search" in pgt else ""),
         s["search_fixed"]["p95_ms"] < 20, SEARCH),
        ("Day sheet of a busy day, a year of data, p95 < 50 ms", f"{s['day_sheet_fixed']['p95_ms']} ms"
         + (f" (PostgreSQL alone at that rate: {pgt['daysheet']['p95_ms']} ms)" if "daysheet" in pgt else ""),
         s["day_sheet_fixed"]["p95_ms"] < 50, DAYSHEET),
        ("Peak RSS < 64 MB at 256 connections (read scenarios)", f"{peak_read} MB", peak_read < 64, ""),
        ("Idle RSS < 30 MB", f"{a.idle_rss_kb / 1024:.1f} MB", a.idle_rss_kb / 1024 < 30, ""),
        ("Start-up to ready < 300 ms (migrations applied)", f"{a.startup_ms} ms", a.startup_ms < 300, ""),
        ("Health p99 < 20 ms during a sign-in flood", f"{s['health_during_login']['p99_ms']} ms", s["health_during_login"]["p99_ms"] < 20, ""),
        ("Zero 5xx in every scenario", f"{total_5xx}", total_5xx == 0, ""),
    ]
    if outbox:
        # Bookings still in flight when the load generator stopped may commit unanswered:
        # at most one per connection of each scenario.
        whole = (outbox["events"] == outbox["delivered"] == outbox["successful_attempts"]
                 and outbox["bookings"] <= outbox["events"] <= outbox["bookings"] + 2 * 64)
        targets[-1:-1] = [
            ("Outbox: each booking's webhook event delivered, once", f"{outbox['delivered']} of {outbox['events']} events "
             f"for {outbox['bookings']} bookings answered 201", whole, OUTBOX),
        ]
    if "booking" in seal:
        targets[-1:-1] = [
            ("Longest sealing transaction < 20 ms under the booking load (the whole run's beside it)",
             " / ".join(f"{seal[k]['longest_ms']} ms" for k in ("booking", "run") if k in seal),
             seal["booking"]["longest_ms"] < 20, SEALING),
        ]
    if doc:
        targets[-1:-1] = [
            ("A 200 MB document upload raises the peak RSS by < 16 MB", f"{doc['upload_200']['peak_rise_mb']} MB",
             doc["upload_200"]["met"], DOCUMENTS),
            ("A 200 MB document download raises the peak RSS by < 16 MB", f"{doc['download_200']['peak_rise_mb']} MB",
             doc["download_200"]["met"], DOCUMENTS),
        ]
    cost_rows = costs(cpu, pg, s, pgt, seal, round(a.idle_rss_kb / 1024, 1), peak_read, a.seconds, ip)
    stamp = a.at or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    result = {
        "at": stamp, "seconds_per_scenario": a.seconds, "machine": machine,
        "startup_ms": a.startup_ms, "idle_rss_mb": round(a.idle_rss_kb / 1024, 1),
        "scenarios": s, "pgbench": pg, "pgbench_fixed_rate": pgt, "cpu": cpu,
        "ceiling_fraction": {"patient_read": round(read_frac, 3), "patient_list": round(list_frac, 3),
                             **{k: round(s[k]["rps"] / pg[b]["tps"], 3)
                                for k, b in (("day_sheet", "daysheet"), ("complete", "complete"), ("pay", "pay"))
                                if b in pg}},
        "treatment_data": treatment,
        "payment_books": books,
        "documents": doc,
        "outbox": outbox,
        "sealing": seal,
        "in_process": ip,
        "page_parts": parts,
        "costs": [{"figure": f, "measured": m, "target": t, "met": ok} for f, m, t, ok in cost_rows],
        "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok, _ in targets],
    }
    os.makedirs(a.results, exist_ok=True)
    for name in [f"{stamp}.json", "latest.json"]:
        with open(os.path.join(a.results, name), "w") as f:
            json.dump(result, f, indent=2)

    rows = []
    labels = {
        "health": "GET /api/v2/health (HTTP floor), 32 conn",
        "patient_read": "GET /api/v2/patients/{id}, 32 conn, closed loop",
        "patient_read_fixed": "GET /api/v2/patients/{id}, fixed rate ½ max, latency-corrected",
        "patient_read_256": "GET /api/v2/patients/{id}, 256 conn",
        "patient_list": "GET /api/v2/patients?limit=50, 32 conn",
        "patient_list_fixed": "GET /api/v2/patients?limit=50, fixed rate ½ max",
        "patient_list_256": "GET /api/v2/patients?limit=50, 256 conn",
        "search": "search by name, 100,000-patient clinic, 8 conn",
        "search_fixed": "search by name, fixed rate ½ max",
        "day_sheet": "GET /api/v2/reports/day-sheet (busy day, a year of data), 32 conn",
        "day_sheet_fixed": "GET /api/v2/reports/day-sheet, fixed rate ½ max",
        "complete": "POST /api/v2/procedures/{id}/complete, a different procedure each, 32 conn",
        "pay": "POST /api/v2/payments (Idempotency-Key, no allocations) over 100 patients, 64 conn",
        "book_spread": "POST /api/v2/appointments over 50 providers, 64 conn",
        "book_contended": "POST /api/v2/appointments, one slot, 64 conn",
        "login_flood": "POST /api/v2/auth/login flood, 32 conn",
        "health_during_login": "GET /api/v2/health at 100/s during the sign-in flood",
    }
    fmt = lambda v: "–" if v is None else f"{v}"
    doc_note = ("Uploading and downloading documents (50 MB, one request at a time) and the memory a 200 MB\n"
                "upload takes are under [documents](#documents).\n\n") if doc else ""
    for k, label in labels.items():
        v = s[k]
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(v["statuses"].items()))
        rows.append(f"| {label} | {v['rps']} | {fmt(v['p50_ms'])} | {fmt(v.get('p95_ms'))} | {fmt(v['p99_ms'])} | {fmt(v['p999_ms'])} | {five_xx(v)} | {v['errors']} | {fmt(v.get('peak_rss_mb'))} | {codes} |")
    md = f"""# Molar benchmarks

Measured by `bench/run` ([how to run it](#how-to-run)). Everything runs on one machine over loopback:
the load generator, the server, PostgreSQL and Redis share its cores, so every number is a
floor for a real deployment, not a ceiling.

- Run: {stamp}, {a.seconds} s per scenario; raw results in `bench/results/latest.json`.
- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']} memory, Linux {machine['kernel']}.
- Versions: Molar {machine['molar']}, {machine['postgresql']}, {machine['redis']}, {machine['rustc']}, {machine['oha']}, {machine['wrk']}.
- Data: 1,000 clinics, 1,000,099 patients (clinic 1 holds 100,000), staff, operatories,
  about 438,000 appointments over the past year, and in clinic 1 a catalogue of twelve
  procedure codes and about 10,400 procedures completed over the past year, each charged to
  the journal; seeded once by `bench/seed.sql`. Planned procedures for "complete a
  procedure" are topped up before every run; the payments of "post a payment" accumulate
  on a hundred of clinic 1's patients from run to run.
- Server: release build, `ENVIRONMENT=production`, JSON logs at warn, `DB_POOL_SIZE=32`,
  Redis for rate limits and cache (limits raised so that they do not interfere).
  {pg_link(machine.get("pg_sslmode", "prefer"), machine.get("pg_host", "127.0.0.1"))}
- Load: `oha` (closed loop, and fixed rate with `--latency-correction` for the open-loop
  percentiles) and `wrk` with Lua scripts where each request carries a different body.

## How to run

```sh
bench/run                  # release build, services, one-time seed, every scenario, report
BENCH_SECONDS=10 bench/run # shorter scenarios
BENCH_REPEATS=1 bench/run  # each fixed-rate scenario and closed-loop read and page pair once (default: three times, median reported)
BENCH_DOC_REPEATS=3 bench/run # 50 MB document uploads and downloads (default: five times, median reported)
BENCH_PG_SSLMODE=prefer bench/run # PostgreSQL over TCP and TLS (default: disable, and its Unix socket when it has one, as on one host)
BENCH_PG_HOST=127.0.0.1 bench/run # PostgreSQL over loopback TCP
bench/run --seed-only      # build and seed only
```

`bench/run` builds the release binary, makes sure PostgreSQL and Redis run, and seeds
`molar_bench` once (kept between runs and migrated forward). It installs `oha` from
crates.io into `bench/.cache` once, and `wrk` and `linux-perf` from Debian when missing.
It starts the server in production mode and drives it over loopback through the
scenarios below, measures the database alone with `pgbench`, splits the CPU from `/proc`
and samples the machine with `perf`. After each run of payments it checks that the books
add up ([posting a payment](#posting-a-payment)) and stops with an error when they do
not. It writes `bench/results/latest.json` (plus a
timestamped copy, which git ignores) and this file. It also builds
`examples/in_process.rs`, which sends the server's requests into its router without an HTTP
connection ([where the server's CPU per request goes](#where-the-servers-cpu-per-request-goes)).
After the one-time seed (about three and a half minutes) and the release builds, a run
takes about twenty minutes.

To try a change before a full run, `bench/quick` (about a minute, on the seeded database)
prints the server's and PostgreSQL's CPU per patient read and per page of 50, and the idle
and peak RSS; `BIN=<binary> bench/quick` measures another build for comparison. It writes
nothing here.

## Targets

A missed target's last column names the section, computed from this run, that shows why.

| target | measured | met | why, when missed |
|---|---|---|---|
""" + "\n".join(f"| {t} | {m} | {'yes' if ok else 'no'} | {'' if ok or not why else why} |" for t, m, ok, why in targets) + f"""

## Scenarios

Latencies in milliseconds. Status counts are per response code; errors are connection
errors of the load generator.

| scenario | req/s | p50 | p95 | p99 | p99.9 | 5xx | errors | peak RSS (MB) | statuses |
|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""
{repeats_note(s, labels, pgt)}
{doc_note}Start-up to ready: {a.startup_ms} ms. Idle RSS: {a.idle_rss_kb / 1024:.1f} MB.

## The database's ceiling

`pgbench -M prepared -c 32 -j 2 -T {a.seconds}` as the server's role (row-level security in
force), running exactly the statements the server sends for one request
(`bench/read.sql`, `bench/list.sql`): the session check, `BEGIN` and the clinic setting
(one simple query from the server, one pipeline from pgbench), the query with its audit
insert in the same statement, and `COMMIT`. The read's and the page's pgbench runs follow
the server's closed-loop runs of the same request at once, so that each pair sees the
machine in one state{pairs_note(pg)}.

| request | pgbench tps | server req/s | fraction |
|---|---|---|---|
| patient read | {pg['read']['tps']:.0f} | {s['patient_read']['rps']} | {read_frac:.0%} |
| patient list | {pg['list']['tps']:.0f} | {s['patient_list']['rps']} | {list_frac:.0%} |
""" + (f"""| name search, 8 connections (`bench/search.sql`; no target) | {pg['search']['tps']:.0f} | {s['search']['rps']} | {s['search']['rps'] / pg['search']['tps']:.0%} |
""" if "search" in pg else "") + "".join(
        f"| {label} | {pg[b]['tps']:.0f}{' (failed or aborted: see below)' if 'aborted' in pg[b] else ''} | {s[k]['rps']} | {s[k]['rps'] / pg[b]['tps']:.0%} |\n"
        for label, k, b in (("day sheet (`bench/daysheet.sql`; no target)", "day_sheet", "daysheet"),
                            ("complete a procedure (`bench/complete.sql`; no target)", "complete", "complete"),
                            ("post a payment, 64 connections (`bench/pay.sql`; no target)", "pay", "pay"))
        if b in pg) + f"""
## Where the CPU goes

CPU seconds spent during the closed-loop and fixed-rate scenarios, from `/proc` (the
machine has {os.cpu_count()} cores, so {os.cpu_count() * a.seconds} CPU-seconds per {a.seconds} s scenario). "Other" is the load
generator (oha or pgbench) and the kernel's network work; "busy" is the share of the
machine in use, and "switches" the machine's context switches per request.

| run | busy | server | PostgreSQL | Redis | other | server ms/req | PostgreSQL ms/req | other ms/req | switches/req |
|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(f"| {k} | {v['busy_cpu_s']} ({v['busy_share']:.0%}) | {v['server_cpu_s']} | {v['postgres_cpu_s']} | {v['redis_cpu_s']} | {v['other_cpu_s']} | {v['server_ms_per_request']} | {v['postgres_ms_per_request']} | {v['other_ms_per_request']} | {v['switches_per_request']} |" for k, v in cpu.items()) + f"""

{tail(cpu, s, pgt)}

{gaps(cpu, pg, s, a.seconds, ip)}

{in_process_section(ip, cpu, a.seconds)}
{page_parts_section(parts, cpu)}

## Server profile

{profile(o)}

## PostgreSQL through the server and through pgbench

{pg_profile(o)}

## Where a search's time goes

{search_profile(o, cpu, s, pg, pgt)}

## Completing a procedure and the day sheet

{treatment_section(s, pg, pgt, cpu, treatment)}

## Posting a payment

{payment_section(s, pg, cpu, books, family_plan, abandoned, treatment.get("currency", ""))}

## Documents

{documents_section(doc)}

## The outbox under the booking load

{outbox_section(outbox, s)}

## What a request costs

{costs_section(cost_rows)}

## Sealing the audit trail

{sealing_section(seal)}

## What was profiled and changed

What was profiled and changed, run by run: [bench/history.md](bench/history.md).

## Search plan

Name search runs inside `patient_search()`, a `SECURITY DEFINER` function owned by
`molar_auth`, so the trigram index on the name lexicon is used (under the server's own
row-level security the non-leakproof `%` operator could not reach it). The statements it
runs for "Emma Hofmann" in the 100,000-patient clinic, from `auto_explain`: per query
word, the lexicon's words like it; then the clinic's patients carrying them, index only;
then the best 100 scored:

```
{plan}
```
"""
    with open(a.markdown, "w") as f:
        f.write(md)
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    main()
