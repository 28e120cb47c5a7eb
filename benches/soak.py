#!/usr/bin/env python3
"""Load driver of benches/soak.sh: drives ticks, dashboard reads, exports and releases together
against a running `tellestrek serve`, and writes what every client saw to a JSON summary.

    python3 benches/soak.py setup  BASE ADMIN STATE.json
    python3 benches/soak.py ticks  BASE STATE.json SECONDS OUT.json PERIOD
    python3 benches/soak.py soak   BASE STATE.json SECONDS OUT.json PERIOD SERVER_PID WORKDIR \
                                   RELEASED_PERIOD MEM_BOUND_MB
    python3 benches/soak.py check  BASE STATE.json PERIOD ACKED.json WORKDIR

Only the standard library (http.client, threads), so it runs wherever python3 does. Every tick
carries an Idempotency-Key (a UUID); about one in twenty acknowledged ticks is sent again with
the same key and must be answered 201 with `Idempotent-Replayed: true` and the same body, and a
request whose answer was lost (timeout, closed connection) is sent again with its key until it
is answered. A key's contacts are counted once, at its first 201: that is the number of
acknowledged contacts the caller compares with the server's own count. One "flooder"
supporter sends `count = 10` until the per-supporter cap answers 429 `tick_cap_exceeded`, and
then keeps sending slowly: those 429s are the only error answers expected anywhere.
"""

import http.client
import json
import random
import re
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

TICK_THREADS = 6
# A normal supporter's token is retired well before the policy's cap, so none of them is ever
# refused; the flooder alone reaches it.
CAP_MARGIN = 50


class Conn:
    """One keep-alive HTTP/1.1 connection to the server, reopened after an error."""

    def __init__(self, base, timeout=30.0):
        u = urlsplit(base)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.c = None

    def request(self, method, path, body=None, headers=None):
        """Returns (status, headers dict lower-cased, body bytes, seconds); raises OSError or
        http.client.HTTPException when no answer came."""
        h = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        t0 = time.perf_counter()
        # A kept-alive connection may have been closed by the server while idle (its idle
        # timeout): that shows when sending on it, and is retried once on a new connection,
        # as every HTTP client does. A fresh connection's failure is raised.
        for attempt in (0, 1):
            reused = self.c is not None
            if self.c is None:
                self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.c.request(method, path, body=body, headers=h)
                r = self.c.getresponse()
                data = r.read()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.c.close()
                self.c = None
                if not reused or attempt:
                    raise
                t0 = time.perf_counter()
            except (OSError, http.client.HTTPException):
                self.c.close()
                self.c = None
                raise
        dt = time.perf_counter() - t0
        hdrs = {}
        for k, v in r.getheaders():
            k = k.lower()
            hdrs[k] = hdrs[k] + "\n" + v if k in hdrs else v
        if r.getheader("connection", "").lower() == "close":
            self.c.close()
            self.c = None
        return r.status, hdrs, data, dt


def must(status, data, want, what):
    if status != want:
        raise SystemExit(f"soak.py: {what} answered {status}: {data[:300]!r}")


def new_token(conn, admin, role, org=None):
    body = {"role": role}
    if org:
        body["org"] = org
    s, _, d, _ = conn.request(
        "POST", "/api/v1/tokens", body, {"Authorization": f"Bearer {admin}"}
    )
    must(s, d, 201, f"creating a {role} token")
    return json.loads(d)["token"]


def setup(base, admin, state_path):
    """Creates the tokens every phase uses (they persist in the data directory)."""
    c = Conn(base)
    s, _, d, _ = c.request("GET", "/api/v1/policy", None, {"Authorization": f"Bearer {admin}"})
    must(s, d, 200, "GET /api/v1/policy")
    policy = json.loads(d)
    orgs = {o["id"]: [u["id"] for u in o["units"]] for o in policy["orgs"]}
    dims = {dm["id"]: [v["id"] for v in dm["values"]] for dm in policy["dimensions"]}
    state = {
        "admin": admin,
        "cap": policy["ticks"]["max_per_supporter_per_period"],
        "max_count": policy["ticks"]["max_count_per_request"],
        "orgs": orgs,
        "dims": dims,
        "supporters": [],
        "leaders": {},
        "researcher": new_token(c, admin, "researcher"),
    }
    for org in orgs:
        state["leaders"][org] = new_token(c, admin, "leader", org)
    first = list(orgs)[0]
    state["flooder"] = {"org": first, "token": new_token(c, admin, "supporter", first)}
    json.dump(state, open(state_path, "w"))


class Stats:
    """Shared counters of every client, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.status = {}  # "route status" -> answers
        self.lat = {}  # route -> [seconds]
        self.acked = {}  # org -> contacts acknowledged (first 201 of each key)
        self.keys = 0
        self.resends = 0
        self.lost = 0  # requests sent again because no answer came
        self.failures = []  # unexpected answers, first few kept in full
        self.failure_count = 0

    def answer(self, route, status, dt=None):
        with self.lock:
            k = f"{route} {status}"
            self.status[k] = self.status.get(k, 0) + 1
            if dt is not None:
                self.lat.setdefault(route, []).append(dt)

    def fail(self, what):
        with self.lock:
            self.failure_count += 1
            if len(self.failures) < 20:
                self.failures.append(what)


def guarded(stats, target, *args):
    """A client thread whose crash is a failure of the soak, not a silent loss of load."""

    def run():
        try:
            target(*args)
        except BaseException as e:  # noqa: BLE001 - every crash is reported
            stats.fail(f"{target.__name__} crashed: {e!r}")

    return threading.Thread(target=run)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


class Pool:
    """Supporter tokens: each thread takes one, sends through it until it nears the cap, and
    takes another; new tokens are made by the admin while the load runs (token creation is part
    of the soak, too)."""

    def __init__(self, base, state, stats):
        self.lock = threading.Lock()
        self.base, self.state, self.stats = base, state, stats
        self.conn = Conn(base)
        self.used = {}

    def take(self, org):
        with self.lock:
            for t in self.state["supporters"]:
                if t["org"] == org and not t.get("busy") and not t.get("done"):
                    t["busy"] = True
                    return t
            tok = new_token(self.conn, self.state["admin"], "supporter", org)
            t = {"org": org, "token": tok, "busy": True, "sent": 0}
            self.state["supporters"].append(t)
            return t

    def give_back(self, t, done):
        with self.lock:
            t["busy"] = False
            t["done"] = done


def tick_body(state, rng, org, count, period):
    tags = {d: rng.choice(v) for d, v in state["dims"].items()}
    body = {"org": org, "unit": rng.choice(state["orgs"][org]), "tags": tags}
    if count != 1:
        body["count"] = count
    if period:
        body["period"] = period
    return body


def send_tick(conn, stats, token, body, key, route="tick"):
    """Sends one tick until it is answered; returns (status, headers, parsed body)."""
    payload = json.dumps(body).encode()
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Idempotency-Key": key,
    }
    tries = 0
    while True:
        tries += 1
        try:
            s, h, d, dt = conn.request("POST", "/api/v1/ticks", payload, headers)
        except (OSError, http.client.HTTPException) as e:
            # No answer: the tick may or may not be stored. The key makes the resend safe.
            with stats.lock:
                stats.lost += 1
            if tries > 20:
                raise SystemExit(f"soak.py: no answer to a tick after 20 tries: {e}")
            time.sleep(0.2)
            continue
        stats.answer(route, s, dt if s == 201 else None)
        try:
            parsed = json.loads(d)
        except ValueError:
            parsed = None
        return s, h, parsed


def tick_worker(base, state, stats, pool, stop, seed, period, resend_share):
    rng = random.Random(seed)
    conn = Conn(base)
    orgs = list(state["orgs"])
    margin = CAP_MARGIN + state["max_count"]
    while not stop.is_set():
        org = rng.choice(orgs)
        t = pool.take(org)
        done = False
        for _ in range(rng.randint(20, 60)):
            if stop.is_set():
                break
            if t["sent"] + 3 > state["cap"] - margin:
                done = True
                break
            count = 1 if rng.random() < 0.9 else rng.randint(2, 3)
            body = tick_body(state, rng, org, count, period)
            key = str(uuid.uuid4())
            t["sent"] += count
            s, h, parsed = send_tick(conn, stats, t["token"], body, key)
            if s != 201:
                stats.fail(f"tick: {s} {parsed}")
                continue
            with stats.lock:
                stats.keys += 1
                stats.acked[org] = stats.acked.get(org, 0) + parsed["accepted"]
            if parsed["accepted"] != count:
                stats.fail(f"tick: accepted {parsed['accepted']} of {count}")
            first_replayed = h.get("idempotent-replayed")
            if first_replayed not in ("true", "false"):
                stats.fail(f"tick: Idempotent-Replayed is {first_replayed!r}")
            if rng.random() < resend_share:
                # The same request again, as a phone that did not see the answer would.
                s2, h2, p2 = send_tick(conn, stats, t["token"], body, key, "tick resend")
                with stats.lock:
                    stats.resends += 1
                if s2 != 201 or h2.get("idempotent-replayed") != "true" or p2 != parsed:
                    stats.fail(f"resend: {s2} {h2.get('idempotent-replayed')} {p2} vs {parsed}")
        pool.give_back(t, done)


def flooder(base, state, stats, stop, period):
    """Reaches the cap with count = 10, then keeps knocking: 429 `tick_cap_exceeded` only."""
    rng = random.Random(7)
    conn = Conn(base)
    f = state["flooder"]
    n = state["max_count"]
    capped = 0
    while not stop.is_set():
        body = tick_body(state, rng, f["org"], n, period)
        s, _, parsed = send_tick(conn, stats, f["token"], body, str(uuid.uuid4()), "tick flooder")
        if s == 201:
            if capped:
                stats.fail("flooder: a 201 after the cap answered 429")
            with stats.lock:
                stats.keys += 1
                stats.acked[f["org"]] = stats.acked.get(f["org"], 0) + parsed["accepted"]
                stats.flooder_acked = getattr(stats, "flooder_acked", 0) + parsed["accepted"]
        elif s == 429 and parsed and parsed.get("error", {}).get("code") == "tick_cap_exceeded":
            capped += 1
            time.sleep(0.5)
        else:
            stats.fail(f"flooder: {s} {parsed}")
            time.sleep(0.5)
    with stats.lock:
        stats.flooder_429 = capped


def sign_in(base, token):
    """Signs a browser in as the sign-in page does; returns the Cookie header for pages."""
    c = Conn(base)
    s, h, d, _ = c.request("GET", "/")
    must(s, d, 200, "GET /")
    form = re.search(r"tellestrek_form=([^;]+)", h.get("set-cookie", "")).group(1)
    csrf = re.search(rb'name="csrf" value="([^"]+)"', d).group(1).decode()
    s, h, d, _ = c.request(
        "POST",
        "/sign-in",
        f"csrf={csrf}&token={token}".encode(),
        {
            "Cookie": f"tellestrek_form={form}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    must(s, d, 303, "POST /sign-in")
    session = re.search(r"tellestrek_session=([^;]+)", h.get("set-cookie", "")).group(1)
    return f"tellestrek_session={session}; tellestrek_lang=nb"


def reader(base, stats, stop, route, method, path, headers, pause, check=None):
    """A client that repeats one read (or idempotent action) every `pause` seconds."""
    conn = Conn(base)
    while not stop.is_set():
        try:
            s, h, d, dt = conn.request(method, path, None, headers)
        except (OSError, http.client.HTTPException) as e:
            stats.answer(route, "no-answer")
            stats.fail(f"{route}: no answer: {e}")
            time.sleep(pause)
            continue
        stats.answer(route, s, dt)
        if s != 200:
            stats.fail(f"{route}: {s} {d[:200]!r}")
        elif check:
            problem = check(h, d)
            if problem:
                stats.fail(f"{route}: {problem}")
        stop.wait(pause)


def exporter(base, state, stats, stop, workdir, pause):
    """A researcher downloading the signed CSV export and its signature, and the JSON export;
    keeps the last of each for `tellestrek verify` at the end."""
    conn = Conn(base)
    auth = {"Authorization": f"Bearer {state['researcher']}"}
    n = 0
    while not stop.is_set():
        got = {}
        for route, path in (
            ("export csv", "/api/v1/releases?format=csv&limit=1000"),
            ("export csv sig", "/api/v1/releases.sig?format=csv&limit=1000"),
            ("export json", "/api/v1/releases?limit=1000"),
        ):
            try:
                s, h, d, dt = conn.request("GET", path, None, auth)
            except (OSError, http.client.HTTPException) as e:
                stats.answer(route, "no-answer")
                stats.fail(f"{route}: no answer: {e}")
                break
            stats.answer(route, s, dt)
            if s != 200:
                stats.fail(f"{route}: {s} {d[:200]!r}")
                break
            got[route] = (h, d)
        if len(got) == 3:
            n += 1
            csv_h, csv = got["export csv"]
            sig = got["export csv sig"][1]
            if csv_h.get("x-tellestrek-signature", "").strip() != sig.decode().strip():
                stats.fail("export: the CSV's signature header differs from releases.sig")
            # Files of one download, kept together (the signature covers exactly these bytes).
            open(f"{workdir}/export.csv", "wb").write(csv)
            open(f"{workdir}/export.csv.sig", "wb").write(sig)
            open(f"{workdir}/export.json", "wb").write(got["export json"][1])
        stop.wait(pause)
    with stats.lock:
        stats.exports = n


def memory(pid, stats, stop, every):
    """Samples the server's VmRSS (kB) every `every` seconds."""
    samples, series, t0 = [], [], time.monotonic()
    while not stop.is_set():
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    samples.append(int(line.split()[1]))
        except OSError:
            stats.fail("memory: the server process is gone")
            break
        if len(samples) % 15 == 1:
            # Every 30 s: seconds, VmRSS kB and contacts acknowledged so far, to tell growth
            # with the stored data from growth with time.
            with stats.lock:
                acked = sum(stats.acked.values())
            series.append([round(time.monotonic() - t0), samples[-1], acked])
        stop.wait(every)
    with stats.lock:
        stats.rss = samples
        stats.rss_series = series


def proc_kb(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def summary(stats, seconds, extra):
    lat = {}
    for route, xs in stats.lat.items():
        lat[route] = {
            "n": len(xs),
            "p50_ms": round(pct(xs, 0.50) * 1000, 2),
            "p99_ms": round(pct(xs, 0.99) * 1000, 2),
            "max_ms": round(max(xs) * 1000, 2),
        }
    out = {
        "seconds": round(seconds, 1),
        "acked": stats.acked,
        "keys": stats.keys,
        "resends": stats.resends,
        "lost_answers": stats.lost,
        "answers": dict(sorted(stats.status.items())),
        "latency": lat,
        "failures": stats.failure_count,
        "failure_samples": stats.failures,
    }
    out.update(extra)
    return out


def run(base, state_path, seconds, out_path, period, pid=None, workdir=None, released=None,
        bound_mb=None, per_contact_b=0.0):
    period = None if period == "-" else period
    state = json.load(open(state_path))
    for t in state["supporters"]:
        t["busy"], t["done"], t["sent"] = False, False, 0  # a new period: a fresh cap
    stats = Stats()
    stop = threading.Event()
    pool = Pool(base, state, stats)
    threads = [
        guarded(stats, tick_worker, base, state, stats, pool, stop, 1000 + i, period, 0.05)
        for i in range(TICK_THREADS)
    ]
    threads.append(guarded(stats, flooder, base, state, stats, stop, period))
    extra = {}
    if pid:
        extra["rss_at_rest_kb"] = proc_kb(pid, "VmRSS")
        admin = {"Authorization": f"Bearer {state['admin']}"}
        researcher = {"Authorization": f"Bearer {state['researcher']}"}
        first_seen = {}

        def unchanged(name):
            # A release is drawn once and served unchanged: every read is the first's bytes.
            def check(h, d):
                if name not in first_seen:
                    first_seen[name] = d
                elif d != first_seen[name]:
                    return "a release changed between reads"
            return check

        same_ids = unchanged("release ids")

        def same_releases(h, d):
            return same_ids(h, json.dumps(json.loads(d)["releases"]).encode())

        def read(*args):
            return guarded(stats, reader, base, stats, stop, *args)

        year = released[:4]
        for tok in state["leaders"].values():
            cookie = {"Cookie": sign_in(base, tok)}
            auth = {"Authorization": f"Bearer {tok}"}
            threads += [
                read("dashboard api", "GET", f"/api/v1/dashboard?year={year}", auth, 0.5),
                read("dashboard page", "GET", f"/dashboard?year={year}", cookie, 1.0),
            ]
        threads += [
            read("release (admin, again)", "POST", f"/api/v1/periods/{released}/release",
                 admin, 5.0, same_releases),
            read("releases of the period", "GET", f"/api/v1/releases?period={released}",
                 researcher, 2.0, unchanged("period")),
            read("periods", "GET", "/api/v1/periods", admin, 5.0),
            read("budget", "GET", "/api/v1/budget", researcher, 5.0),
            guarded(stats, exporter, base, state, stats, stop, workdir, 1.0),
            guarded(stats, memory, pid, stats, stop, 2.0),
        ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    last = t0
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        if time.monotonic() - last >= 60:
            last = time.monotonic()
            with stats.lock:
                acked = sum(stats.acked.values())
            print(f"  {int(last - t0)} s: {acked} contacts acknowledged, "
                  f"{stats.failure_count} failures", flush=True)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    if pid:
        rss = getattr(stats, "rss", [])
        extra["rss_max_kb"] = max(rss) if rss else None
        extra["rss_samples"] = len(rss)
        extra["rss_last_kb"] = rss[-1] if rss else None
        extra["hwm_kb"] = proc_kb(pid, "VmHWM")
        extra["rss_series"] = getattr(stats, "rss_series", [])
        extra["exports"] = getattr(stats, "exports", 0)
        # The bound: a fixed part, plus the idempotency records of the contacts logged in the
        # periods that still take ticks (sled holds about 130 bytes of memory for each; they
        # go when the period closes). Every contact of this phase is in the open month.
        with stats.lock:
            acked = sum(stats.acked.values())
        extra["bound_mb"] = round(bound_mb + acked * per_contact_b / 2**20, 1) if bound_mb else None
        if extra["bound_mb"] and extra["hwm_kb"] and extra["hwm_kb"] > extra["bound_mb"] * 1024:
            stats.fail(f"memory: VmHWM {extra['hwm_kb'] // 1024} MB over the bound "
                       f"{extra['bound_mb']} MB")
        if "period" in first_seen:
            open(f"{workdir}/released-period.json", "wb").write(first_seen["period"])
    extra["flooder_acked"] = getattr(stats, "flooder_acked", 0)
    extra["flooder_429"] = getattr(stats, "flooder_429", 0)
    # Once refused, the flooder must have had exactly the cap; the soak phase must reach it.
    if (extra["flooder_429"] or pid) and extra["flooder_acked"] != state["cap"]:
        stats.fail(f"flooder: {extra['flooder_acked']} acknowledged, the cap is {state['cap']}")
    # Supporters made during the run are kept for the next phase.
    for t in state["supporters"]:
        t.pop("busy", None)
        t.pop("done", None)
    json.dump(state, open(state_path, "w"))
    out = summary(stats, elapsed, extra)
    json.dump(out, open(out_path, "w"), indent=1)
    acked = sum(stats.acked.values())
    print(f"  {elapsed:.0f} s: {acked} contacts acknowledged in {stats.keys} requests "
          f"({acked / elapsed:.0f}/s), {stats.resends} resent, {stats.failure_count} failures")
    return 1 if stats.failure_count else 0


def check(base, state_path, period, acked_path, workdir):
    """After the period is released: its total release per organisation must contain the
    acknowledged contacts well inside its interval (see soak.sh for the bound), and the
    releases of the earlier period read during the soak must be served unchanged."""
    state = json.load(open(state_path))
    acked = json.load(open(acked_path))["acked"]
    c = Conn(base)
    admin = {"Authorization": f"Bearer {state['admin']}"}
    researcher = {"Authorization": f"Bearer {state['researcher']}"}
    s, _, d, _ = c.request("POST", f"/api/v1/periods/{period}/release", None, admin)
    must(s, d, 200, f"POST /api/v1/periods/{period}/release")
    s, _, d, _ = c.request(
        "GET", f"/api/v1/releases?period={period}&marginal=total", None, researcher
    )
    must(s, d, 200, "GET the total releases")
    bad = 0
    for r in json.loads(d)["releases"]:
        cell = r["cells"][0]
        noisy, (lo, hi) = cell["noisy"], cell["noisy_ci"]
        half = (hi - lo) / 2
        truth = acked.get(r["org"], 0)
        # 3 × the 95% half-width: a discrete Laplace noise lies outside it about once in
        # 8,000 draws (exp(-3 ln 20)), a Gaussian far less often.
        ok = abs(noisy - truth) <= 3 * half
        bad += not ok
        print(f"  {r['id']}: released {noisy} (95% {lo}..{hi}), acknowledged {truth}: "
              f"{'ok' if ok else 'OUTSIDE 3 half-widths'}")
    return 1 if bad else 0


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "setup":
        setup(argv[2], argv[3], argv[4])
        return 0
    if cmd == "ticks":
        return run(argv[2], argv[3], float(argv[4]), argv[5], argv[6])
    if cmd == "soak":
        return run(argv[2], argv[3], float(argv[4]), argv[5], argv[6], int(argv[7]), argv[8],
                   argv[9], float(argv[10]), float(argv[11]) if len(argv) > 11 else 0.0)
    if cmd == "check":
        return check(argv[2], argv[3], argv[4], argv[5], argv[6])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
