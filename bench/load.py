#!/usr/bin/env python3
"""One-command load benchmark for orga-proxy.

    python3 bench/load.py                  # everything below, Node reference included
    python3 bench/load.py --only distant   # one scenario (repeat --only for more)
    python3 bench/load.py --no-node        # orga-proxy only
    python3 bench/load.py --quick          # shorter runs, for a smoke test

Builds the release binary, installs the Node reference's npm packages into a scratch
folder when missing, starts the fake Orga Cloud (`orga-proxy mock-upstream`) and the
subjects on 127.0.0.1, drives them with wrk (HTTP load) or Python threads (random
arrivals), and prints Markdown tables ready for docs/performance.md:

  fast      fast loopback upstream, 32 connections: requests/s, p50/p99, errors, peak
            RSS and CPU time per credential, orga-proxy and the Node reference (Express +
            @orga-ai/node + cors + express-rate-limit) side by side;
  coldstart process start to the first credential served (first 200), both subjects;
  distant   a distant upstream, many callers waiting at once: 1,000 connections at
            100 ms per upstream answer and 5,000 at 500 ms (both allow 5,000
            credentials/s, two calls each), the Node reference at the first: throughput
            as a share of what the latency allows, and memory per waiting request =
            (peak RSS during the run - RSS at rest) / connections;
  overhead  one connection: the proxy's p50 against the two upstream calls made
            directly (printed for scale; this VM's wake-up latency dominates it);
  pool      upstream at 150 ms per answer: time-to-credentials with the pool off and a
            fixed pool on; then pool.size = "auto" at steady random (Poisson) demand of
            5/s and 50/s (hits, tokens minted but never handed out) and at a jump from
            0 to 50/s (p99 during the first 2 s, when the pool caught up).

Ends with the floors each figure must hold, in the same run. Both HTTP subjects keep
their rate limiter in the path, set far above the offered load. The load generator, the
fake and the subject share the machine: compare ratios within a run, quote medians, and
say when the machine was busy. The descriptor limit is raised for the children the way a
deployment would (each waiting request holds two: its caller's and its upstream's).
Needs wrk (Debian package `wrk`; installed with apt-get when missing and run as root),
and node and npm for the Node reference.
"""

import argparse
import concurrent.futures
import http.client
import math
import os
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "orga-proxy"
API_KEY = "sk_orga_ai_bench"
EMAIL = "bench+load@example.com"
PATH = "/api/orga/credentials"
NODE_DIR = Path(tempfile.gettempdir()) / "orga-proxy-bench-node"
HUGE_LIMIT = "1000000000"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCENARIOS = ["fast", "coldstart", "distant", "overhead", "pool"]
# Each check appends (what, value shown, target shown, held?) for the closing table.
FLOORS = []


def say(msg=""):
    print(msg, flush=True)


def floor(what, shown, target, held):
    FLOORS.append((what, shown, target, held))


def raise_fd_limit():
    """As a deployment would (systemd LimitNOFILE, docker --ulimit nofile): the soft
    limit up to the hard one; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    return target


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"process {proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    sys.exit(f"nothing listening on {port} after {timeout}s")


class Server:
    """A child process listening on a port: its memory and CPU time from /proc."""

    def __init__(self, args, port, env=None, cwd=None, wait=True):
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(args, env=full_env, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.port = port
        if wait:
            wait_port(port, self.proc)

    def _status_kb(self, field):
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1))
        except (OSError, AttributeError):
            return float("nan")

    def peak_rss_kb(self):
        return self._status_kb("VmHWM")

    def rss_kb(self):
        return self._status_kb("VmRSS")

    def open_fds(self):
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return 0

    def cpu_seconds(self):
        """User plus system time of every thread so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def mock(latency="0s"):
    port = free_port()
    return Server([str(BIN), "mock-upstream", "--listen", f"127.0.0.1:{port}", "--latency", latency], port)


def proxy_env(upstream_port, port):
    return {
        "ORGA_API_KEY": API_KEY,
        "ORGA_USER_EMAIL": EMAIL,
        "ORGA_BASE_URL": f"http://127.0.0.1:{upstream_port}",
        "ORGA_PROXY_SERVER__LISTEN": f"127.0.0.1:{port}",
        # The limiter's maxima: far above the offered load, but still in the path.
        "ORGA_PROXY_RATE_LIMIT__REQUESTS_PER_MINUTE": "1000000",
        "ORGA_PROXY_RATE_LIMIT__BURST": "100000",
        # More callers at once than the largest scenario, so none is shed.
        "ORGA_PROXY_SERVER__CONCURRENCY_LIMIT": "20000",
        "ORGA_PROXY_SERVER__METRICS_LISTEN": "",
        "ORGA_PROXY_CONFIG": "/dev/null",
        "RUST_LOG": "",
    }


def proxy(upstream_port, extra_env=None, wait=True):
    port = free_port()
    env = proxy_env(upstream_port, port)
    env.update(extra_env or {})
    return Server([str(BIN), "serve"], port, env, wait=wait)


def node_reference(upstream_port, wait=True):
    port = free_port()
    env = {
        "ORGA_API_KEY": API_KEY,
        "ORGA_USER_EMAIL": EMAIL,
        "ORGA_BASE_URL": f"http://127.0.0.1:{upstream_port}",
        "PORT": str(port),
        "RATE_LIMIT_PER_MINUTE": HUGE_LIMIT,
    }
    return Server(["node", "server.js"], port, env, cwd=NODE_DIR, wait=wait)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * UNITS[unit]


def wrk(url, connections, seconds, script=None):
    threads = min(2, connections)
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if "50" not in pct:
        sys.exit(f"wrk measured nothing against {url}:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": to_ms(pct["50"]),
        "p99": to_ms(pct["99"]),
        "errors": errors,
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
    }


def measured(server, url, connections, seconds):
    """wrk against `server`, with the server's CPU time per request over the run."""
    before = server.cpu_seconds()
    r = wrk(url, connections, seconds)
    r["cpu_us"] = (server.cpu_seconds() - before) * 1e6 / max(1, r["requests"])
    return r


def warm(url, seconds=2, connections=8):
    wrk(url, connections, seconds)


def subjects(args):
    return [("orga-proxy", proxy)] + ([("Node reference", node_reference)] if args.node else [])


def ratio_floor(what, p, n, limit, at_least):
    ratio = p / n if n else float("nan")
    held = ratio >= limit if at_least else ratio <= limit
    floor(what, f"{ratio:.3g}x", f"{'>=' if at_least else '<='} {limit}x", held)
    return ratio


def scenario_fast(args):
    say("\n## Fast upstream, 32 connections\n")
    upstream = mock()
    results = {}
    try:
        for name, start in subjects(args):
            server = start(upstream.port)
            try:
                url = f"http://127.0.0.1:{server.port}{PATH}"
                warm(url)
                r = measured(server, url, 32, args.seconds)
                results[name] = (r, server.peak_rss_kb() / 1024)
            finally:
                server.stop()
    finally:
        upstream.stop()
    say("| subject | requests/s | p50 ms | p99 ms | errors | peak RSS MB | CPU µs per credential |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for name, (r, rss) in results.items():
        say(f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {rss:.1f} | "
            f"{r['cpu_us']:.0f} |")
    p, prss = results["orga-proxy"]
    floor("fast: errors", str(p["errors"]), "0", p["errors"] == 0)
    if "Node reference" in results:
        n, nrss = results["Node reference"]
        ratio_floor("fast: throughput vs Node", p["rps"], n["rps"], 8, True)
        ratio_floor("fast: p99 vs Node", p["p99"], n["p99"], 0.2, False)
        ratio_floor("fast: peak RSS vs Node", prss, nrss, 0.2, False)
        ratio_floor("fast: CPU per credential vs Node", p["cpu_us"], n["cpu_us"], 0.15, False)


def first_credential_ms(start, upstream_port):
    """Process start to the first 200 on the credentials route, polling every ms."""
    server = start(upstream_port, wait=False)
    try:
        deadline = server.started + 30
        while time.perf_counter() < deadline:
            if server.proc.poll() is not None:
                sys.exit(f"{server.proc.args} exited with {server.proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                conn.request("GET", PATH)
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return (time.perf_counter() - server.started) * 1000
            except OSError:
                pass
            time.sleep(0.001)
        sys.exit("no credential within 30 s of starting")
    finally:
        server.stop()


def scenario_coldstart(args):
    rounds = 3 if args.quick else 7
    say(f"\n## Cold start: process start to the first credential served (median of {rounds})\n")
    upstream = mock()
    medians = {}
    try:
        for name, start in subjects(args):
            medians[name] = statistics.median(first_credential_ms(start, upstream.port) for _ in range(rounds))
    finally:
        upstream.stop()
    say("| subject | cold start ms |")
    say("|---|---:|")
    for name, ms in medians.items():
        say(f"| {name} | {ms:.1f} |")
    if "Node reference" in medians:
        ratio_floor("cold start vs Node", medians["orga-proxy"], medians["Node reference"], 0.1, False)


def waiting(server, url, connections, seconds):
    """Memory per waiting request: RSS at rest (after a light warm-up, so lazy set-up
    is done), then `connections` callers for `seconds`; (peak - rest) / connections.
    Also the most descriptors the server held, sampled through the run."""
    warm(url, 1, 8)
    time.sleep(0.5)
    rest = server.rss_kb()
    most_fds, done = [0], threading.Event()

    def sample():
        while not done.wait(0.1):
            most_fds[0] = max(most_fds[0], server.open_fds())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = measured(server, url, connections, seconds)
    finally:
        done.set()
        sampler.join()
    r["rest_mb"], r["peak_mb"] = rest / 1024, server.peak_rss_kb() / 1024
    r["kb_per_request"] = (server.peak_rss_kb() - rest) / connections
    r["fds"] = most_fds[0]
    return r


def scenario_distant(args):
    say("\n## Distant upstream: many callers waiting at once\n")
    runs = [("orga-proxy", proxy, 1000, "100ms"), ("orga-proxy", proxy, 5000, "500ms")]
    if args.node:
        runs.append(("Node reference", node_reference, 1000, "100ms"))
    rows = []
    for name, start, connections, latency in runs:
        upstream = mock(latency)
        server = start(upstream.port)
        try:
            r = waiting(server, f"http://127.0.0.1:{server.port}{PATH}", connections, args.seconds)
        finally:
            server.stop()
            upstream.stop()
        allowed = connections / (2 * to_ms(latency) / 1000)
        rows.append((name, connections, latency, allowed, r))
    say("| subject | connections | upstream latency | requests/s | of what the latency allows | errors | "
        "RSS at rest MB | peak RSS MB | KB per waiting request | most descriptors | CPU µs per credential |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, connections, latency, allowed, r in rows:
        say(f"| {name} | {connections:,} | {latency} | {r['rps']:,.0f} | {100 * r['rps'] / allowed:.1f}% | "
            f"{r['errors']} | {r['rest_mb']:.1f} | {r['peak_mb']:.1f} | {r['kb_per_request']:.1f} | "
            f"{r['fds']:,} | {r['cpu_us']:.0f} |")
        if name == "orga-proxy":
            at = f"{connections:,} conns, {latency}"
            share = 100 * r["rps"] / allowed
            floor(f"distant ({at}): throughput, errors", f"{share:.1f}%, {r['errors']} errors",
                  ">= 90%, 0 errors", share >= 90 and r["errors"] == 0)
            floor(f"distant ({at}): memory per waiting request", f"{r['kb_per_request']:.1f} KB", "<= 30 KB",
                  r["kb_per_request"] <= 30)
    say("\nKB are /proc's kB (1,024 bytes). Each waiting request holds two descriptors (its caller's "
        "connection and its upstream one).")


DIRECT_LUA = r"""
local token = nil
request = function()
  if token == nil then
    return wrk.format("POST", "/v1/realtime/client-secrets?email=bench%2Bload%40example.com",
      {["Authorization"] = "Bearer sk_orga_ai_bench", ["Content-Type"] = "application/json"}, "")
  end
  local t = token
  token = nil
  return wrk.format("GET", "/v1/realtime/ice-config", {["Authorization"] = "Bearer " .. t}, nil)
end
response = function(status, headers, body)
  local t = body:match('"ephemeral_token":"([^"]+)"')
  if t then token = t end
end
"""


def scenario_overhead(args):
    say("\n## One connection: the proxy's own cost\n")
    upstream = mock()
    server = proxy(upstream.port)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(DIRECT_LUA)
        script = f.name
    try:
        proxied = f"http://127.0.0.1:{server.port}{PATH}"
        direct = f"http://127.0.0.1:{upstream.port}/"
        warm(proxied, 2, 1)
        warm(direct, 1, 1)
        # Interleaved short runs, so drift on a shared machine hits both sides alike.
        p50s_proxy, p50s_direct, p50s_floor = [], [], []
        for _ in range(3 if args.quick else 5):
            p50s_proxy.append(wrk(proxied, 1, max(2, args.seconds // 3))["p50"])
            p50s_direct.append(2 * wrk(direct, 1, max(2, args.seconds // 3), script)["p50"])
            # One bare HTTP exchange on loopback (the fake's 404): the hop any proxy adds.
            p50s_floor.append(wrk(f"http://127.0.0.1:{upstream.port}/floor", 1, 2)["p50"])
    finally:
        server.stop()
        upstream.stop()
        os.unlink(script)
    p, d = statistics.median(p50s_proxy), statistics.median(p50s_direct)
    floor_us = statistics.median(p50s_floor) * 1000
    say(f"p50 through the proxy {p * 1000:.0f} µs; the two upstream calls made directly {d * 1000:.0f} µs; "
        f"added {(p - d) * 1000:.0f} µs; one bare loopback exchange {floor_us:.0f} µs (no target: this VM's "
        f"wake-up latency sets it)")


def get_credentials(port):
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", PATH)
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return (time.perf_counter() - started) * 1000, status


def poisson(port, per_second, seconds, seed):
    """Callers arriving at random (exponential gaps) for `seconds`, each on its own
    connection: [(offset s, latency ms, status)]."""
    rng = random.Random(seed)
    results, lock = [], threading.Lock()
    begin = time.perf_counter()

    def call(offset):
        latency, status = get_credentials(port)
        with lock:
            results.append((offset, latency, status))

    with concurrent.futures.ThreadPoolExecutor(max_workers=128) as pool:
        at = 0.0
        while True:
            at += rng.expovariate(per_second)
            if at >= seconds:
                break
            delay = begin + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(call, at)
    return sorted(results)


def pool_metrics(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    names = {"hits": "orga_proxy_pool_hits_total", "misses": "orga_proxy_pool_misses_total",
             "discards": "orga_proxy_pool_discards_total", "target": "orga_proxy_pool_target_size",
             "ready": "orga_proxy_pool_ready"}
    found = {}
    for key, name in names.items():
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        found[key] = float(m.group(1)) if m else 0.0
    return found


def auto_pool(upstream_port):
    metrics_port = free_port()
    server = proxy(upstream_port, {"ORGA_PROXY_POOL__ENABLED": "true", "ORGA_PROXY_POOL__SIZE": "auto",
                                   "ORGA_PROXY_SERVER__METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    return server, metrics_port


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1)] if values else float("nan")


def scenario_pool(args):
    say("\n## Prefetch pool, upstream at 150 ms per answer\n")
    upstream = mock("150ms")
    try:
        live = pool_on_off(upstream, args)
        steady = [steady_pool(upstream, rate, secs, args) for rate, secs in
                  ([(5, 20), (50, 10)] if args.quick else [(5, 60), (50, 30)])]
        jump = jump_pool(upstream, args)
    finally:
        upstream.stop()
    say("\n| pool.size = \"auto\" | requests | hits | minted, never handed out | p50 ms | p99 ms | target at the end |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for rate, r in steady:
        say(f"| steady {rate}/s | {r['requests']} | {100 * r['hit_ratio']:.2f}% | {r['wasted']} of {r['minted']} "
            f"({100 * r['waste_ratio']:.1f}%) | {r['p50']:.1f} | {r['p99']:.1f} | {r['target']:.0f} |")
        floor(f"pool auto, steady {rate}/s: hits", f"{100 * r['hit_ratio']:.2f}%", ">= 99%", r["hit_ratio"] >= 0.99)
        floor(f"pool auto, steady {rate}/s: minted never handed out", f"{100 * r['waste_ratio']:.1f}%", "<= 5%",
              r["waste_ratio"] <= 0.05)
    say(f"\nJump from 0 to 50/s: {jump['requests']} requests in the first 2 s, p99 {jump['ramp_p99']:.1f} ms "
        f"(a live mint, pool off: p50 {live:.1f} ms); last miss {jump['caught_up']:.2f} s after the jump; after 2 s "
        f"{100 * jump['hits_after']:.2f}% hits, p99 {jump['p99_after']:.1f} ms.")
    say("\nA miss is an answer slower than half a live mint (a hit takes a millisecond or two). \"Minted, never "
        "handed out\" counts those discarded at max_age during the run and those still in the pool at its end.")
    floor("pool auto, jump 0 -> 50/s: p99 in the first 2 s", f"{jump['ramp_p99']:.1f} ms",
          f"<= a live mint + 10 ms ({live + 10:.0f} ms)", jump["ramp_p99"] <= live + 10)
    floor("pool auto, jump 0 -> 50/s: caught up", f"{jump['caught_up']:.2f} s", "<= 2 s", jump["caught_up"] <= 2)


def pool_on_off(upstream, args):
    figures = {}
    for label, env in [("pool off", {}), ("pool on, size 8", {"ORGA_PROXY_POOL__ENABLED": "true"})]:
        server = proxy(upstream.port, env)
        try:
            time.sleep(1.5)  # let the pool fill
            lat = []
            for _ in range(8 if args.quick else 20):
                latency, status = get_credentials(server.port)
                assert status == 200, status
                lat.append(latency)
                time.sleep(0.25)
            figures[label] = statistics.median(lat)
        finally:
            server.stop()
    say("| one caller every 250 ms | p50 time-to-credentials ms |")
    say("|---|---:|")
    for label, p50 in figures.items():
        say(f"| {label} | {p50:.1f} |")
    return figures["pool off"]


def steady_pool(upstream, rate, seconds, args):
    server, metrics_port = auto_pool(upstream.port)
    try:
        poisson(server.port, rate, 5, seed=rate)  # warm-up: the pool learns the demand
        before = pool_metrics(metrics_port)
        calls = poisson(server.port, rate, seconds, seed=rate + 1)
        time.sleep(1)  # mints in flight land in the pool
        after = pool_metrics(metrics_port)
    finally:
        server.stop()
    assert all(status == 200 for _, _, status in calls), "a caller failed"
    d = {k: after[k] - before[k] for k in ("hits", "misses", "discards")}
    wasted = d["discards"] + after["ready"]
    minted = d["hits"] + d["discards"] + after["ready"] - before["ready"]
    latencies = [lat for _, lat, _ in calls]
    return rate, {
        "requests": len(calls), "hit_ratio": d["hits"] / max(1, d["hits"] + d["misses"]),
        "wasted": int(wasted), "minted": int(minted), "waste_ratio": wasted / max(1, minted),
        "p50": statistics.median(latencies), "p99": pct(latencies, 99), "target": after["target"],
    }


def jump_pool(upstream, args):
    server, _ = auto_pool(upstream.port)
    try:
        time.sleep(3)  # idle: the automatic pool holds nothing
        calls = poisson(server.port, 50, 5 if args.quick else 10, seed=7)
    finally:
        server.stop()
    assert all(status == 200 for _, _, status in calls), "a caller failed"
    live_threshold = 150  # half a live mint of two 150 ms answers
    ramp = [lat for at, lat, _ in calls if at < 2]
    after = [lat for at, lat, _ in calls if at >= 2]
    misses = [at for at, lat, _ in calls if lat >= live_threshold]
    return {
        "requests": len(ramp), "ramp_p99": pct(ramp, 99), "caught_up": max(misses, default=0.0),
        "hits_after": sum(1 for lat in after if lat < live_threshold) / max(1, len(after)),
        "p99_after": pct(after, 99),
    }


def ensure_tools(args):
    if not shutil.which("wrk"):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            say("installing wrk")
            subprocess.run("apt-get update -qq && apt-get install -y -qq wrk", shell=True, check=True)
        else:
            sys.exit("wrk is needed: apt-get install wrk")
    if args.binary:
        global BIN
        BIN = Path(args.binary).resolve()
    else:
        say("building the release binary")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    if args.node:
        if not (shutil.which("node") and shutil.which("npm")):
            say("node/npm not found: skipping the Node reference")
            args.node = False
            return
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        for name in ["package.json", "server.js"]:
            shutil.copy(ROOT / "bench" / "node-reference" / name, NODE_DIR / name)
        if not (NODE_DIR / "node_modules" / "@orga-ai" / "node").exists():
            say(f"installing the Node reference into {NODE_DIR}")
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True)


def machine():
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024 / 1024
    load = os.getloadavg()[0]
    return (f"{os.cpu_count()} cores ({model.group(1).strip() if model else 'unknown CPU'}), {mem:.0f} GiB, "
            f"load average {load:.1f} at the start")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-node", dest="node", action="store_false", help="skip the Node reference")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only this scenario")
    parser.add_argument("--binary", help="benchmark this orga-proxy binary instead of building one")
    args = parser.parse_args()
    args.seconds = 4 if args.quick else 10
    fds = raise_fd_limit()
    ensure_tools(args)
    say(f"# orga-proxy load benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    say(f"\n{machine()}; descriptor limit {fds:,}{'; quick run' if args.quick else ''}")
    for name in args.only or SCENARIOS:
        globals()[f"scenario_{name}"](args)
    if FLOORS:
        say("\n## Floors, this run\n")
        if args.quick:
            say("A quick run: too short for the floors (the pool's leftovers alone weigh more); a smoke test.\n")
        say("| what | this run | floor | held |")
        say("|---|---:|---:|:---:|")
        for what, shown, target, held in FLOORS:
            say(f"| {what} | {shown} | {target} | {'yes' if held else '**no**'} |")


if __name__ == "__main__":
    main()
