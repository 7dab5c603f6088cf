#!/usr/bin/env python3
"""CI smoke test of the README's run command (`scripts/run`), from a clean clone of this checkout.

For each mode (dev, and prod with REFLEX_ENV=prod): `git clone` the checkout (committed files only) into
a temporary folder, start `scripts/run` there in its own process group on free ports, wait for the page
URL it prints, fetch /login, sign in over HTTP with the demo owner credentials it printed (the /login
page's form route, which sets the HttpOnly session cookie), fetch /billing, /api/auth/me and
/api/credits/balance with that cookie, then stop the whole process group. Fails, with the tail of the
log, when a step fails, when the log shows a traceback, or when Reflex warns that Node is too old.

Standard library only. Usage: .ci/smoke_run.py [--parallel] [dev] [prod]   (default: both, one after the
other; .ci/run runs both in parallel, each in its own clone).
Environment: SMOKE_START_TIMEOUT (seconds until the page URL is printed, default 600),
SMOKE_TMPDIR (where the clones go; default /dev/shm when it has room), SMOKE_KEEP=1 (keep the clones).
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PAGE_URL = re.compile(r"App running at: (http://\S+?)/?\s*$", re.M)
OWNER = re.compile(r"^\s*owner\s*:\s*(\S+@\S+)\s*/\s*(\S+)\s*$", re.M)
# Reflex: "Your version (20.20.2) of Node.js is out of date. Upgrade to 22.22.0 or higher." (searched with the
# line breaks of Rich's wrapping turned into spaces)
NODE_WARNING = re.compile(r"Node(?:\.js)?\b[^.]{0,40}(?:out of date|too old)", re.I)
MILESTONE = re.compile(r"^(==>|App running at|Creating Production Build|Compiling|.*Initializing|\s*owner\s*:)")
SESSION_COOKIE = "opb_session"
PORT_VARS = ("FRONTEND_PORT", "BACKEND_PORT", "LOCALSTRIPE_PORT", "STRIPE_SANDBOX_PORT", "LEMON_SANDBOX_PORT")
# Settings that would make the run something other than the README's embedded default.
CLEARED_VARS = (
    "ORCAPULSE_ENV",  # production mode needs real keys; the smoke run is the sandboxed default
    "DATABASE_URL",
    "ORCAPULSE_DATA_DIR",
    "REDIS_URL",
    "REFLEX_REDIS_URL",
    "APP_URL",
    "STRIPE_SECRET_KEY",
    "STRIPE_PUBLISHABLE_KEY",
    "STRIPE_API_BASE",
    "STRIPE_WEBHOOK_SECRETS",
    "LEMONSQUEEZY_API_KEY",
    "LEMONSQUEEZY_API_BASE",
    "LEMONSQUEEZY_JS_URL",
    "LEMONSQUEEZY_WEBHOOK_SECRET",
    "LEMONSQUEEZY_TEST_MODE",
    "PAYMENT_PROVIDERS",
    "GRANIAN_WORKERS",
    "VIRTUAL_ENV",
)


class SmokeFailure(Exception):
    pass


def log(message: str) -> None:
    print(f"\033[1;36m[smoke]\033[0m {message}", file=sys.stderr, flush=True)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def clean_env(ports: dict[str, int], mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_VARS and not k.startswith("REFLEX_")}
    # the clone installs its own tools: no Node or bun of another checkout's .tools/ on PATH
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "/.tools/" not in p + "/")
    # download caches only (legitimately shared): bun's package cache of this checkout, when it has one
    bun_cache = ROOT / ".tools" / "bun-cache"
    if "BUN_INSTALL_CACHE_DIR" not in env and bun_cache.is_dir():
        env["BUN_INSTALL_CACHE_DIR"] = str(bun_cache)
    env.update({name: str(port) for name, port in ports.items()})
    if mode != "dev":
        env["REFLEX_ENV"] = mode
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Run:
    """`scripts/run` in a process group of its own, its output in a log file."""

    def __init__(self, clone: Path, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.log_file = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            ["scripts/run"],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: its own process group, killed as a whole in stop()
        )
        self.pgid = self.proc.pid
        self.started = time.monotonic()
        self.milestones: dict[str, float] = {}  # first line of each step -> seconds after the start

    def text(self) -> str:
        text = ANSI.sub("", self.log_path.read_text(errors="replace"))
        now = time.monotonic() - self.started
        for line in text.splitlines():
            if MILESTONE.match(line):
                self.milestones.setdefault(line.strip()[:70], now)
        return text

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(self, pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            if match := pattern.search(self.text()):
                return match
            if self.proc.poll() is not None:
                raise SmokeFailure(f"scripts/run exited with status {self.proc.returncode} before {what}")
            if time.monotonic() > deadline:
                raise SmokeFailure(f"no {what} after {timeout:.0f} s")
            time.sleep(0.5)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self) -> None:
        """SIGTERM to the whole group (scripts/run, Reflex, its frontend server, the sandboxes), then SIGKILL."""
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            if not self.group_alive():
                break
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while self.group_alive() and time.monotonic() < deadline:
                self.proc.poll()  # reap scripts/run itself so the group can empty
                time.sleep(0.2)
        self.proc.poll()
        self.log_file.close()
        if self.group_alive():
            raise SmokeFailure(f"processes of group {self.pgid} survived SIGKILL")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(opener, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None, timeout=30.0):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read(), response.geturl()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read(), url


def wait_http_ok(url: str, timeout: float, run: Run) -> float:
    opener = urllib.request.build_opener()
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout:
        if run.proc.poll() is not None:
            raise SmokeFailure(f"scripts/run exited with status {run.proc.returncode} while waiting for {url}")
        try:
            status, _, _, _ = fetch(opener, url, timeout=10)
            if status == 200:
                return time.monotonic() - started
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:  # not listening yet, or a half-started server
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise SmokeFailure(f"GET {url} did not answer 200 within {timeout:.0f} s (last: {last})")


def check_signed_in(page: str, backend: str, email: str, password: str) -> None:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    origin = page.rstrip("/")

    status, _, body, _ = fetch(opener, f"{backend}/api/credits/balance")
    if status != 401:
        raise SmokeFailure(f"GET {backend}/api/credits/balance without a session answered {status}: {body[:200]!r}")

    # the /login page's form: a plain POST to the backend, answered with a redirect and the HttpOnly cookie
    no_redirect = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    form = urllib.parse.urlencode({"email": email, "password": password}).encode()
    status, headers, _, _ = fetch(
        no_redirect,
        f"{backend}/api/auth/login-form",
        data=form,
        headers={"Origin": origin, "Content-Type": "application/x-www-form-urlencoded"},
    )
    location = headers.get("location", "")
    if status != 303 or location != f"{origin}/billing":
        raise SmokeFailure(f"sign-in form answered {status} to {location!r}, expected 303 to {origin}/billing")
    set_cookie = headers.get("set-cookie", "")
    if not set_cookie.startswith(f"{SESSION_COOKIE}=") or "httponly" not in set_cookie.lower():
        raise SmokeFailure(f"sign-in did not set an HttpOnly {SESSION_COOKIE} cookie: {set_cookie!r}")
    if not any(c.name == SESSION_COOKIE for c in jar):
        raise SmokeFailure(f"the {SESSION_COOKIE} cookie was not accepted for {origin}")

    status, headers, body, final = fetch(opener, f"{origin}/billing")
    if status != 200 or "text/html" not in headers.get("content-type", ""):
        raise SmokeFailure(f"GET {origin}/billing answered {status} {headers.get('content-type')} (at {final})")

    for path, check in (
        ("/api/auth/me", lambda d: d.get("email") == email and d.get("role") == "owner"),
        ("/api/credits/balance", lambda d: isinstance(d.get("balance"), str) and d.get("currency") == "USD"),
    ):
        status, headers, body, _ = fetch(opener, f"{backend}{path}", headers={"Accept": "application/json"})
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if status != 200 or "application/json" not in headers.get("content-type", "") or not isinstance(data, dict):
            raise SmokeFailure(f"GET {backend}{path} answered {status} {headers.get('content-type')}: {body[:300]!r}")
        if not check(data):
            raise SmokeFailure(f"GET {backend}{path} answered unexpected JSON: {body[:300]!r}")
        log(f"  GET {path}: 200 {body[:120].decode(errors='replace')}")


def smoke(mode: str, ports: dict[str, int], workdir: Path, artifacts: Path, start_timeout: float) -> dict[str, float]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    clone = workdir / f"clone-{mode}"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    timings["clone"] = time.monotonic() - started

    if mode != "dev":
        ports["BACKEND_PORT"] = ports["FRONTEND_PORT"]  # one port in a production build
    log_path = artifacts / f"smoke-run-{mode}.log"
    log(f"{mode}: scripts/run in {clone} (ports {ports}), log in {log_path}")
    run = Run(clone, clean_env(ports, mode), log_path)
    failure: SmokeFailure | None = None
    try:
        page = run.wait_for(PAGE_URL, start_timeout, "page URL printed").group(1).rstrip("/")
        timings["url printed"] = time.monotonic() - started
        owner = OWNER.search(run.text())
        if not owner:
            raise SmokeFailure("scripts/run did not print the demo owner's credentials")
        email, password = owner.groups()
        port = urllib.parse.urlsplit(page).port
        if port != ports["FRONTEND_PORT"]:
            raise SmokeFailure(f"the page URL {page} is not on FRONTEND_PORT {ports['FRONTEND_PORT']}")
        host = urllib.parse.urlsplit(page).hostname
        backend = f"http://{host}:{ports['BACKEND_PORT']}"
        log(f"{mode}: page URL {page}, backend {backend}, owner {email}")

        wait_http_ok(f"{page}/login", 180, run)
        timings["/login served"] = time.monotonic() - started
        wait_http_ok(f"{backend}/ping", 180, run)  # dev: the backend starts on its own port, maybe later
        timings["backend /ping"] = time.monotonic() - started
        check_signed_in(page, backend, email, password)
        timings["signed in, /billing and API"] = time.monotonic() - started

        text = run.text()
        if node := NODE_WARNING.search(" ".join(text.split())):
            raise SmokeFailure(f"Node warning in the output: {node.group(0)!r}")
        if "Traceback (most recent call last)" in text:
            raise SmokeFailure("a traceback in the output")
    except SmokeFailure as exc:
        failure = exc
    except Exception as exc:  # an unexpected answer (reset connection, bad JSON...) fails the step too
        failure = SmokeFailure(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            run.stop()
        except SmokeFailure as exc:
            failure = failure or exc
    timings["stopped"] = time.monotonic() - started
    if failure is None:
        for port in ports.values():
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    failure = SmokeFailure(f"port {port} still answers after the stop")
    steps = sorted(run.milestones.items(), key=lambda item: item[1])
    lines = "".join(f"\n  {mode} {seconds:6.1f}  {line}" for line, seconds in steps)
    log(f"{mode}: steps of scripts/run (seconds after its start, seen at 0.5 s resolution):{lines}")
    if failure is not None:
        print(f"----- tail of {log_path} -----\n{run.tail()}\n-----", file=sys.stderr)
        for extra in sorted((clone / "data").glob("*.log")):
            if not (tail := "\n".join(extra.read_text(errors="replace").splitlines()[-15:])):
                continue
            print(f"----- tail of {extra.name} -----\n{tail}\n-----", file=sys.stderr)
        raise SmokeFailure(f"{mode}: {failure}")
    return timings


def scratch_dir(clones: int) -> str | None:
    """Where the clones go: SMOKE_TMPDIR, else memory (/dev/shm) when it has room, else the usual temp folder.
    A clone with its set-up is about 1 GB in 40,000 files: on disk, writing and deleting them is a good part
    of the time."""
    if chosen := os.environ.get("SMOKE_TMPDIR"):
        return chosen
    shm = "/dev/shm"
    try:
        if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > (2 + 1.5 * clones) * 2**30:
            return shm
    except OSError:
        pass
    return None


def main(argv: list[str]) -> int:
    parallel = "--parallel" in argv
    modes = [arg for arg in argv if arg != "--parallel"] or ["dev", "prod"]
    if not set(modes) <= {"dev", "prod"} or len(set(modes)) != len(modes):
        print(f"usage: {sys.argv[0]} [--parallel] [dev] [prod]", file=sys.stderr)
        return 2
    start_timeout = float(os.environ.get("SMOKE_START_TIMEOUT", "600"))
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="orcapulse-smoke-", dir=scratch_dir(len(modes))))
    all_ports = free_ports(len(PORT_VARS) * len(modes))  # at once, so that no two modes get the same port
    started = time.monotonic()

    def one(index: int, mode: str) -> bool:
        ports = dict(zip(PORT_VARS, all_ports[index * len(PORT_VARS) :], strict=False))
        try:
            timings = smoke(mode, ports, workdir, artifacts, start_timeout)
        except (SmokeFailure, subprocess.CalledProcessError) as exc:
            log(f"FAILED {exc}")
            return False
        summary = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
        log(f"{mode}: OK ({summary})")
        return True

    try:
        if parallel:
            with ThreadPoolExecutor(len(modes)) as pool:
                results = list(pool.map(one, range(len(modes)), modes))
        else:
            results = [one(index, mode) for index, mode in enumerate(modes)]
    finally:
        if os.environ.get("SMOKE_KEEP") == "1":
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"{' and '.join(modes)}{' in parallel' if parallel else ''}: {time.monotonic() - started:.0f} s in all")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
