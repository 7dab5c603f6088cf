"""The operator CLI, run as a real process against a real database file.

Each call is a new OS process: forked from a server that imported the CLI once (tests/cli_process.py),
or, in test_the_installed_console_script, the installed `orcapulse-billing` script itself.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import sqlalchemy as sa

from orcapulse_billing.accounts import hash_api_key, verify_password

from .cli_process import SCRIPT, run_cli

CLI = SCRIPT  # the installed console script


def _make_cli(tmp_path, *, installed_script: bool = False, **env_vars: str):
    """`run(*args)`: the CLI on a fresh database, each call a new process (forked from the preloaded
    server, or with installed_script the console script through subprocess)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "DATABASE_URL": url, "WELCOME_CREDIT": "5.00", **env_vars}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        if installed_script:
            result = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)
        else:
            result = run_cli(args, env=env, timeout=60)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    run("init-db")
    run.engine = sa.create_engine(url)
    run.env = env
    return run


@pytest.fixture
def cli(tmp_path):
    run = _make_cli(tmp_path)
    yield run
    run.engine.dispose()


@pytest.fixture(scope="module")
def acme_cli(tmp_path_factory):
    """One database for the bad-input cases: each of them must leave it unchanged anyway."""
    run = _make_cli(tmp_path_factory.mktemp("cli"))
    run("create-org", "Acme")
    yield run
    run.engine.dispose()


def _snapshot(engine):
    with engine.connect() as conn:
        counts = [
            conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar()
            for t in ("organization", "app_user", "membership", "ledger_entry", "api_key")
        ]
        return counts, conn.execute(sa.text("SELECT * FROM credit_account")).all()


def _balance(cli, org="Acme"):
    return cli("balance", org).stdout


def test_create_org_add_users_grant_and_balance(cli):
    assert "created organization 1: Acme" in cli("create-org", "Acme").stdout
    assert "balance $5.00 (5.0000 credits)" in _balance(cli)  # the welcome credit
    out = cli("add-user", "Acme", "Owner@Acme.test", "--role", "owner", "--password", "correct horse").stdout
    assert "owner@acme.test is now owner of 'Acme'" in out
    generated = cli("add-user", "1", "member@acme.test", "--role", "member").stdout.split("shown once): ")[1].strip()
    out = cli(
        "grant", "Acme", "12.3456", "--type", "bonus", "--description", "Startup grant credit - Approved application"
    )
    assert "balance 17.3456" in out.stdout
    cli("grant", "Acme", "-2.3456", "--type", "adjustment", "--description", "Manual correction")
    assert "balance $15.00 (15.0000 credits), added 17.3456, consumed 2.3456, 3 transactions" in _balance(cli)
    with cli.engine.connect() as conn:
        hashes = dict(conn.execute(sa.text("SELECT email, password_hash FROM app_user")).all())
        sources = conn.execute(sa.text("SELECT type, source FROM ledger_entry ORDER BY seq")).all()
    assert verify_password(hashes["owner@acme.test"], "correct horse")
    assert verify_password(hashes["member@acme.test"], generated)
    assert hashes["owner@acme.test"].startswith("$argon2")
    assert [tuple(r) for r in sources] == [("bonus", "welcome"), ("bonus", "manual"), ("adjustment", None)]


def test_the_installed_console_script(tmp_path):
    """The entry point itself, as an operator runs it. The other tests fork the same main() from a server
    that imported it once (tests/cli_process.py): here both must answer alike, and each forked process
    must read its own environment."""
    cli = _make_cli(tmp_path, installed_script=True, WELCOME_CREDIT="7.25")  # init-db through the script
    try:
        assert cli("create-org", "Acme").stdout == "created organization 1: Acme\n"
        before = _snapshot(cli.engine)
        balance = cli("balance", "Acme")
        assert balance.stdout == (
            "Acme: balance $7.25 (7.2500 credits), added 7.2500, consumed 0.0000, 1 transactions\n"
        )
        bad = cli("grant", "Acme", "abc", "--type", "bonus", "--description", "x", ok=False)
        assert (bad.returncode, bad.stdout) == (2, "")
        assert bad.stderr == "orcapulse-billing: error: argument amount: not a number: 'abc'\n"
        for real in (balance, bad):
            forked = run_cli(real.args[1:], env=cli.env)
            assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)
        assert _snapshot(cli.engine) == before

        # a forked process reads its own environment: WELCOME_CREDIT 7.25, whatever the fork server's
        assert run_cli(["create-org", "Beta"], env=cli.env).returncode == 0
        assert "balance $7.25 (7.2500 credits)" in run_cli(["balance", "Beta"], env=cli.env).stdout

        # an unexpected error: the interpreter's traceback and exit status 1, from the script and forked alike
        (tmp_path / "file").touch()
        broken = {**cli.env, "DATABASE_URL": f"sqlite:///{tmp_path / 'file' / 'sub' / 'cli.db'}"}
        real = subprocess.run([CLI, "balance", "Acme"], env=broken, capture_output=True, text=True, timeout=60)
        forked = run_cli(["balance", "Acme"], env=broken)
        for result in (real, forked):
            assert result.returncode == 1 and result.stdout == ""
            assert result.stderr.startswith("Traceback (most recent call last):\n")
        assert forked.stderr.splitlines()[-1] == real.stderr.splitlines()[-1]
        assert "Error" in real.stderr.splitlines()[-1]
    finally:
        cli.engine.dispose()


def test_api_key_is_printed_once_and_stored_as_hash(cli):
    cli("create-org", "Acme")
    cli("add-user", "Acme", "dev@acme.test", "--role", "admin", "--password", "longenough")
    key = cli("create-api-key", "dev@acme.test").stdout.strip()
    assert key.startswith("opb_") and len(key) > 40
    with cli.engine.connect() as conn:
        prefix, key_hash = conn.execute(sa.text("SELECT prefix, key_hash FROM api_key")).one()
    assert key_hash == hash_api_key(key) and key not in key_hash and key.startswith(prefix)


def test_grant_with_idempotency_key_posts_once(cli):
    cli("create-org", "Acme")
    for _ in range(2):
        out = cli("grant", "Acme", "10", "--type", "bonus", "--description", "promo", "--idempotency-key", "promo-1")
    assert "already posted" in out.stdout
    assert "balance $15.00" in _balance(cli)


@pytest.mark.parametrize(
    "args, message",
    [
        (["grant", "Acme", "1.23456", "--type", "bonus", "--description", "x"], "at most 4 decimal places"),
        (["grant", "Acme", "abc", "--type", "bonus", "--description", "x"], "not a number"),
        (["grant", "Acme", "-1", "--type", "bonus", "--description", "x"], "a bonus must be positive"),
        (["grant", "Acme", "1", "--type", "purchase", "--description", "x"], "invalid choice"),
        (["grant", "Acme", "-100", "--type", "adjustment", "--description", "x"], "insufficient credits"),
        (["grant", "Nobody", "1", "--type", "bonus", "--description", "x"], "no organization 'Nobody'"),
        (["grant", "Acme", "1", "--type", "bonus"], "--description"),
        (["add-user", "Acme", "not-an-email", "--role", "member"], "not an email address"),
        (["add-user", "Acme", "a@b.test", "--role", "boss"], "invalid choice"),
        (["add-user", "Acme", "a@b.test", "--role", "member", "--password", "short"], "at least 8 characters"),
        (["create-org", "Acme"], "already exists"),
        (["create-org", ""], "1 to 200 characters"),
        (["create-api-key", "ghost@acme.test"], "no user"),
        (["balance", "42"], "no organization"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(acme_cli, args, message):
    cli = acme_cli
    before = _snapshot(cli.engine)
    result = cli(*args, ok=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert _snapshot(cli.engine) == before


def test_phone_numbers_from_the_cli(cli):
    cli("create-org", "Acme")
    cli("add-phone", "Acme", "+14155550100", "--monthly-cost", "1.15", "--acquired", "2026-10-05")
    out = cli("bill-phones", "--date", "2026-11-23").stdout
    assert "billed: Phone number rental - +1 415 555 0100 - Oct 2026" in out
    assert "billed: Phone number rental - +1 415 555 0100 - Nov 2026" in out
    assert cli("bill-phones", "--date", "2026-11-23").stdout.startswith("0 billed")  # a rerun bills nothing
    assert "balance $2.70" in _balance(cli)  # 5.00 welcome - 2 x 1.15
    bad = cli("add-phone", "Acme", "+14155550100", "--monthly-cost", "1", ok=False)
    assert bad.returncode == 2 and "already rented" in bad.stderr


def test_low_balance_email_lands_in_the_outbox_without_smtp(cli):
    cli("create-org", "Acme")
    cli("add-user", "Acme", "boss@acme.test", "--role", "owner", "--password", "long-enough")
    assert "the outbox is empty" in cli("outbox").stdout
    cli("grant", "Acme", "-1", "--type", "adjustment", "--description", "correction")  # 5.00 -> 4.00
    out = cli("outbox", "--full").stdout
    assert "low_balance  to boss@acme.test  [queued]" in out and "Low balance: $4.00 left for Acme" in out


# -- holds ---------------------------------------------------------------------------------------


def _holds(engine):
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT id, status, amount FROM credit_hold ORDER BY id"))]


def test_holds_from_the_cli(cli):
    cli("create-org", "Acme")  # 5.00 welcome credit
    out = cli("hold", "Acme", "voice_realtime", "10", "--key", "call-1").stdout  # 10 min at 0.11
    assert out.startswith("hold 1: reserved 1.1000 for voice_realtime 10 in 'Acme', expires ")
    assert out.strip().endswith("UTC; available 3.9000")
    again = cli("hold", "Acme", "voice_realtime", "10", "--key", "call-1").stdout
    assert "hold 1: reserved 1.1000" in again and "(already placed with this key)" in again
    cli("hold", "Acme", "sms_twilio", "3", "--key", "sms-1")  # 3 segments at 0.009
    listed = cli("holds", "Acme").stdout.splitlines()
    assert listed[0].startswith("#1 voice_realtime 10: 1.1000 reserved, expires ") and "key call-1" in listed[0]
    assert listed[1].startswith("#2 sms_twilio 3: ")
    assert listed[2] == "Acme: 2 active hold(s), reserved 1.1270, available 3.8730"

    # the call ran longer than estimated: charged in full, the whole hold released
    out = cli("capture", "1", "12.5").stdout
    assert out.strip() == "hold 1 captured: charged 1.3750, released 1.1000; available 3.5980"
    assert "nothing charged again" in cli("capture", "1", "12.5").stdout
    assert cli("release", "2").stdout.strip() == "hold 2 released: 0.0270 back; available 3.6250"
    assert "already released; nothing changed" in cli("release", "2").stdout
    assert cli("holds", "Acme").stdout.strip() == "Acme: 0 active hold(s), reserved 0.0000, available 3.6250"
    assert "balance $3.63 (3.6250 credits), added 5.0000, consumed 1.3750, 2 transactions" in _balance(cli)
    assert _holds(cli.engine) == [(1, "captured", 11000), (2, "released", 270)]

    # a hold fits within the available balance plus the grace limit (GRACE_LIMIT 5.00): 78.4 min = 8.6240;
    # then the available balance is below zero and even a minute is refused
    cli("hold", "Acme", "voice_realtime", "78.4", "--key", "call-2")
    refused = cli("hold", "Acme", "voice_realtime", "1", "--key", "call-3", ok=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("orcapulse-billing: error: insufficient credits: available -4.9990, needed 0.1100")


@pytest.fixture(scope="module")
def holds_cli(tmp_path_factory):
    """Acme with 5.00, one hold captured (1) and one released (2): the bad-input cases leave it as it is."""
    run = _make_cli(tmp_path_factory.mktemp("holds"))
    run("create-org", "Acme")
    run("hold", "Acme", "voice_realtime", "1", "--key", "a")
    run("capture", "1", "1")
    run("hold", "Acme", "voice_realtime", "1", "--key", "b")
    run("release", "2")
    yield run
    run.engine.dispose()


@pytest.mark.parametrize(
    "args, message",
    [
        (["hold", "Nobody", "voice_realtime", "1", "--key", "k"], "no organization 'Nobody'"),
        (["hold", "Acme", "teleport", "1", "--key", "k"], "unknown operation 'teleport'"),
        (["hold", "Acme", "voice_realtime", "abc", "--key", "k"], "not a number: 'abc'"),
        (["hold", "Acme", "voice_realtime", "0", "--key", "k"], "must be a positive number"),
        (["hold", "Acme", "voice_realtime", "-2", "--key", "k"], "must be a positive number"),
        (["hold", "Acme", "voice_realtime", "NaN", "--key", "k"], "must be a positive number"),
        (["hold", "Acme", "chat", "1.5", "--key", "k"], "a chat is counted in whole messages"),
        (["hold", "Acme", "openai_input_tokens", "1000", "--key", "k", "--model", "gpt-0"], "unknown OpenAI model"),
        (["hold", "Acme", "voice_realtime", "1"], "--key"),
        (["hold", "Acme", "voice_realtime", "2", "--key", "a"], "already used for another hold"),
        (
            ["hold", "Acme", "voice_realtime", "100", "--key", "k"],
            "insufficient credits: available 4.8900, needed 11.0000",
        ),
        (["capture", "99", "1"], "no hold 99"),
        (["capture", "x", "1"], "not a hold id: 'x'"),
        (["capture", "2", "1"], "hold 2 was released (the operation failed): it cannot be captured"),
        (["capture", "1", "2"], "hold 1 was already captured with quantity 1"),
        (["capture", "1", "0"], "must be a positive number"),
        (["release", "99"], "no hold 99"),
        (["release", "1"], "hold 1 was captured (the operation was charged): it cannot be released"),
        (["holds", "Nobody"], "no organization 'Nobody'"),
    ],
)
def test_bad_hold_input_is_one_line_exit_2_and_writes_nothing(holds_cli, args, message):
    cli = holds_cli
    before = _snapshot(cli.engine), _holds(cli.engine)
    result = cli(*args, ok=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert (_snapshot(cli.engine), _holds(cli.engine)) == before
