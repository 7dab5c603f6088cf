"""Run the operator CLI in a fresh OS process per call, without paying for its imports each time.

Starting `orcapulse-billing` costs 1.5-2 s of imports (SQLAlchemy, SQLModel, the models), and its first
posting another second (the ledger's auto-recharge listener imports the payments package and Stripe),
before it does anything. `run_cli` forks each invocation from a fork server that imported all that
once (multiprocessing's "forkserver" start method with a preload), so every call is still a separate
real process, with its own environment, file descriptors, exit status and database connections, but
starts in milliseconds. In the child, as in the console script:

- `os.environ` is cleared and replaced by the given environment (the C environment too), `sys.argv`
  set, the working directory the caller's;
- file descriptors 1 and 2 are redirected onto files (`os.dup2`), so whatever the process writes,
  from Python, logging or C code, is captured, and new `sys.stdout`/`sys.stderr` are opened on them;
- `sys.exit(main(args))` runs, and its exit is the interpreter's: an int code is the exit status, None
  is 0, anything else is printed on stderr and the status is 1; an uncaught exception prints its
  traceback (through `sys.excepthook`) on stderr, status 1. Then, as at interpreter exit, non-daemon
  threads are waited for, atexit handlers run and the streams are flushed.

The result is a `subprocess.CompletedProcess` with text stdout and stderr, decoded as
`subprocess.run(..., text=True)` decodes them; a call that outlives its timeout is killed and raises
`subprocess.TimeoutExpired`.

What the preload could freeze: what is read once, when the interpreter starts or a module is imported.
- orcapulse_billing reads no environment variable and no configuration at import time: `get_settings()`
  (lru_cache), the engines of `db.get_engine()` and the caches of `services` are empty after the preload
  and filled on first use, inside the child, from the child's environment (tests/test_cli.py checks it
  with a WELCOME_CREDIT the fork server does not have).
- Stripe reads STRIPE_LOG into a module constant at import, and writes a hint on stderr when CLAUDECODE
  or CLAUDE_CODE_CHILD_SESSION is set. When one of these is set (in the child's environment or the
  server's), the child forgets the preloaded Stripe and payments modules, so they are imported again,
  when the CLI first needs them, exactly as in a new interpreter.
- The interpreter reads PYTHON* variables and the locale (LANG, LC_*) once, at start, and pydantic
  PYDANTIC_DISABLE_PLUGINS once: a child whose environment differs from the server's in one of them
  becomes the installed script itself (os.execve), slower but exact. TZ is re-read (time.tzset()).
- Each child shares the fork server's hash seed instead of drawing its own.
If the fork server was already started by something else without this preload, the children import
the CLI themselves: correct, only slower. The entry point itself is covered only by running the
installed script (tests/test_cli.py keeps such a test).
"""

from __future__ import annotations

import atexit
import io
import locale
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

PROGRAM = "orcapulse-billing"
SCRIPT = str(Path(sys.executable).with_name(PROGRAM))  # the installed console script; sys.argv[0] in the child
PRELOAD = [
    "orcapulse_billing.cli",
    "orcapulse_billing.grants",  # imported by the commands that use them
    "orcapulse_billing.holds",
    "orcapulse_billing.jobs",
    "orcapulse_billing.payments.auto_recharge",  # by the first posting (the ledger's listener); imports Stripe
    "alembic.command",  # init-db
    "alembic.config",
    "sqlite3",
]
# read when a preloaded module is imported: when set, the child imports that module again (see above)
IMPORT_TIME_ENV = {("stripe", "orcapulse_billing.payments"): ("STRIPE_LOG", "CLAUDECODE", "CLAUDE_CODE_CHILD_SESSION")}
# read once when the interpreter starts (or cached by a preloaded module): a child whose environment
# differs in one of them from the fork server's runs the installed script instead
STARTUP_ENV_PREFIXES = ("PYTHON", "LC_")
STARTUP_ENV = ("LANG", "LANGUAGE", "PYDANTIC_DISABLE_PLUGINS")

_context = None
_context_lock = threading.Lock()


def _forkserver():
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)  # takes effect when the fork server starts
            _context = context
        return _context


def run_cli(
    args: Sequence[str], *, env: Mapping[str, str], timeout: float = 60, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`orcapulse-billing *args` in a new process with exactly `env` as its environment (and `cwd`, by
    default the current directory), like `subprocess.run([SCRIPT, *args], env=env, capture_output=True,
    text=True, timeout=timeout)`."""
    args = [str(arg) for arg in args]
    command = [SCRIPT, *args]
    with tempfile.TemporaryDirectory(prefix="cli-process-") as tmp:
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        process = _forkserver().Process(
            target=_child, args=(args, dict(env), cwd or os.getcwd(), out_path, err_path), name=PROGRAM
        )
        process.start()
        try:
            process.join(timeout)
            if process.exitcode is None:
                process.kill()
                process.join()
                raise subprocess.TimeoutExpired(command, timeout, output=_read(out_path), stderr=_read(err_path))
            returncode = process.exitcode  # -N when killed by signal N, like subprocess
        finally:
            if process.exitcode is not None:
                process.close()
        return subprocess.CompletedProcess(command, returncode, _read(out_path), _read(err_path))


def _read(path: str) -> str:
    try:
        with open(path, newline=None) as f:  # the locale's encoding and universal newlines, like text=True
            return f.read()
    except FileNotFoundError:  # the child died before redirecting its output
        return ""


# -- in the child ----------------------------------------------------------------------------------


def _child(args: list[str], env: dict[str, str], cwd: str, out_path: str, err_path: str) -> None:
    server_env = dict(os.environ)  # the fork server's, as it was when it started (and imported PRELOAD)
    os.environ.clear()  # unsetenv/putenv too: C code and subprocesses see the same environment
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [SCRIPT, *args]
    _redirect(out_path, err_path)
    if _read_at_startup_differs(server_env, env):
        os.execve(SCRIPT, sys.argv, env)  # becomes the real script: same pid, descriptors, exit status
    time.tzset()
    for modules, names in IMPORT_TIME_ENV.items():
        if any(env.get(name) or server_env.get(name) for name in names):
            _forget(modules)
    code = _run(args)
    os._exit(_interpreter_exit(code))


def _read_at_startup_differs(server_env: dict[str, str], env: dict[str, str]) -> bool:
    names = {name for name in (*server_env, *env) if name.startswith(STARTUP_ENV_PREFIXES)} | set(STARTUP_ENV)
    return any(server_env.get(name) != env.get(name) for name in names)


def _forget(modules: tuple[str, ...]) -> None:
    """Imported again on next use, from this process's environment (nothing preloaded refers to them:
    orcapulse_billing imports the payments package inside the functions that use it)."""
    for name in list(sys.modules):
        if name in modules or name.startswith(tuple(f"{module}." for module in modules)):
            del sys.modules[name]


def _redirect(out_path: str, err_path: str) -> None:
    original = sys.__stdout__ or sys.stdout  # the encoding this interpreter chose for its stdio
    encoding = getattr(original, "encoding", None) or locale.getpreferredencoding(False)
    errors = getattr(original, "errors", None) or "strict"
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()  # anything pending belongs to the old destination
        except (AttributeError, OSError, ValueError):
            pass
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    # as the interpreter opens them on a pipe or file: stdout block-buffered, stderr line-buffered
    # with backslashreplace (the old objects wrote to the same descriptors, now the files)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", closefd=False), encoding=encoding, errors=errors)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        open(2, "wb", closefd=False), encoding=encoding, errors="backslashreplace", line_buffering=True
    )


def _run(args: list[str]) -> int:
    try:
        from orcapulse_billing.cli import main  # preloaded: already imported in the fork server

        sys.exit(main(args))
    except SystemExit as exc:
        return _exit_status(exc.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())  # "Traceback (most recent call last): ..." on stderr
        return 1


def _exit_status(code: object) -> int:
    """The interpreter's handling of an uncaught SystemExit."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _interpreter_exit(code: int) -> int:
    """What the interpreter does at exit before the process ends, then the status the OS would report."""
    threading._shutdown()  # wait for non-daemon threads (as Py_FinalizeEx does)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code & 0xFF
