"""Shared fixtures: real databases (a SQLite file and a fresh PostgreSQL database per session).

A missing service is a failure, never a skip: the test command (scripts/test) starts PostgreSQL
and Redis where none answers, so absence means the set-up is broken.
"""

from __future__ import annotations

import os
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orcapulse_billing.accounts import account_id_for, create_organization
from orcapulse_billing.db import make_engine, upgrade
from orcapulse_billing.ledger import Ledger

GRACE = Decimal("5.00")
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_admin_engine():
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is needed at {POSTGRES_ADMIN_URL} and does not answer: {exc.orig}")
    return engine


@pytest.fixture(scope="session")
def pg_database_factory():
    """Creates empty PostgreSQL databases and drops them at the end of the session."""
    admin = None
    created: list[str] = []

    def create() -> str:
        nonlocal admin
        admin = admin or _pg_admin_engine()
        name = f"opb_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return str(sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False))

    yield create
    if admin is not None:
        with admin.connect() as conn:
            for name in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url(pg_database_factory) -> str:
    url = pg_database_factory()
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'ledger.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture(scope="session")
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def ledger(engine) -> Ledger:
    return Ledger(engine, grace_limit=GRACE)


@pytest.fixture
def new_account(engine, ledger):
    """Creates a fresh organization (no welcome credit unless asked) and returns its account id."""

    def make(welcome: Decimal = Decimal(0)) -> int:
        org = create_organization(engine, ledger, f"org-{uuid.uuid4().hex[:10]}", welcome_credit=welcome)
        return account_id_for(engine, org.id)

    return make


# -- the app in a real browser ------------------------------------------------------------------


@pytest.fixture(scope="session")
def stripe_sandbox():
    """The offline Stripe sandbox as separate processes: localstripe, and our Checkout stand-in."""
    from .sandboxes import start_stripe_sandbox

    sandbox = start_stripe_sandbox()
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def lemon_sandbox():
    """The offline Lemon Squeezy stand-in as a separate process."""
    from .sandboxes import start_lemon_sandbox

    sandbox = start_lemon_sandbox()
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def app_database(tmp_path_factory, stripe_sandbox, lemon_sandbox) -> str:
    """The app's own database (migrated, with the demo organisation) and configuration."""
    from orcapulse_billing.config import get_settings
    from orcapulse_billing.seed import seed_demo

    from .sandboxes import STRIPE_PREVIOUS_WEBHOOK_SECRET

    url = f"sqlite:///{tmp_path_factory.mktemp('app') / 'app.db'}"
    os.environ["DATABASE_URL"] = url
    os.environ["STRIPE_SECRET_KEY"] = "sk_test_sandbox"
    os.environ["STRIPE_API_BASE"] = stripe_sandbox.api_base
    # two secrets, as during a rotation: events signed with either are accepted
    os.environ["STRIPE_WEBHOOK_SECRETS"] = f"{STRIPE_PREVIOUS_WEBHOOK_SECRET},{stripe_sandbox.webhook_secret}"
    os.environ.update(
        LEMONSQUEEZY_API_KEY="test_sandbox_key",
        LEMONSQUEEZY_API_BASE=lemon_sandbox.api_base,
        LEMONSQUEEZY_STORE_ID="1",
        LEMONSQUEEZY_VARIANT_ID="1",
        LEMONSQUEEZY_WEBHOOK_SECRET=lemon_sandbox.webhook_secret,
        LEMONSQUEEZY_JS_URL=lemon_sandbox.url + "/js/lemon.js",
        # The app server's safety nets (auto-recharge sweep, reconcile) share this database with the tests,
        # which run those rounds themselves when they test them: a deployment's round landing between two
        # steps of a test would settle its pending charge for it (it did once in CI). A day: never in a run.
        SWEEP_INTERVAL_SECONDS="86400",
    )
    get_settings.cache_clear()
    upgrade(url)
    engine = make_engine(url)
    seed_demo(engine, Ledger(engine, grace_limit=GRACE), welcome_credit=Decimal("5.00"))
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def app(app_database, stripe_sandbox, lemon_sandbox):
    """The Reflex app started once per session on loopback."""
    from .browser import ROOT, reflex_environment

    reflex_environment()
    from reflex.testing import AppHarness

    from orcapulse_billing.config import get_settings

    with AppHarness.create(root=ROOT, app_name="orcapulse_billing") as harness:
        # The harness serves the page on "localhost" but points its socket at 127.0.0.1; one host
        # name keeps cookies working.
        harness.base_url = harness.frontend_url.replace("localhost", "127.0.0.1").rstrip("/")
        host, port = harness.backend.servers[0].sockets[0].getsockname()[:2]
        harness.backend_url = f"http://{host}:{port}"
        # The page's origin is known only now (the harness picks its port): it is the app's URL, the
        # origin whose socket handshakes and signed-in writes the app accepts (read per request).
        os.environ["APP_URL"] = harness.base_url
        get_settings.cache_clear()
        stripe_sandbox.configure_webhook(harness.backend_url + "/api/credits/webhook")
        lemon_sandbox.configure(
            webhook_url=harness.backend_url + "/api/credits/lemonsqueezy/webhook",
            webhook_secret=lemon_sandbox.webhook_secret,
        )
        yield harness


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import expect, sync_playwright

    from .browser import CHROMIUM_ARGS, chromium_path

    # A page assertion retries for up to 10 s (Playwright's default is 5): on a loaded 2-core CI machine an
    # event's round trip through the backend has taken longer than 5 s. One that holds passes at once.
    expect.set_options(timeout=10_000)
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser context per test; a screenshot of the end state goes to test-artifacts/."""
    from .browser import screenshot_name

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    yield tab
    try:
        tab.screenshot(path=str(screenshot_name(request.node.nodeid)), full_page=True)
    finally:
        context.close()


# -- the REST API over ASGI against the app's database ------------------------------------------


@pytest.fixture(scope="session")
def app_engine(app_database):
    from orcapulse_billing.db import get_engine

    return get_engine(app_database)


@pytest.fixture(scope="session")
def app_ledger(app_engine):
    from orcapulse_billing.services import get_ledger

    return get_ledger(app_engine)


@pytest.fixture
def client(app_database):
    from fastapi.testclient import TestClient

    from orcapulse_billing.api import create_api_app

    with TestClient(create_api_app()) as test_client:
        yield test_client


@pytest.fixture
def org(app_engine, app_ledger):
    from .apiutil import Org

    return Org(app_engine, app_ledger)


@pytest.fixture
def other(app_engine, app_ledger):
    from .apiutil import Org

    return Org(app_engine, app_ledger, roles=("owner", "member"))


# -- the suite in two processes (scripts/test) ---------------------------------------------------

# Tests marked `shared_app` run in one pytest process, the others in a second one at the same time.
# The first holds what must not be shared with another process or disturbed by other tests in its
# own: the app harness (one per session; its dev server owns the checkout's .web and reads
# process-wide settings) and the browser, and the modules that publish and listen on the shared
# Redis by organization id, which two processes' databases would both hand out. Tests of the REST
# API on the app's database without the harness run in the other process, on its own app database
# and sandboxes.
_SHARED_APP_FIXTURES = {"app", "browser", "page"}
_SHARED_APP_MODULES = {
    "test_events",
    "test_jobs",
    "test_notifications",
    "test_origins_and_limits",
    "test_production_guard",
    "test_redis_outages",
    "test_scale_out",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if _SHARED_APP_FIXTURES & set(getattr(item, "fixturenames", ())) or module in _SHARED_APP_MODULES:
            item.add_marker(pytest.mark.shared_app)
