"""Browser test support: the app started once per session (Reflex's AppHarness, on loopback,
against its own seeded SQLite file), and Playwright driving Debian's Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
TOOLS = ROOT / ".tools"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def reflex_environment() -> None:
    """What Reflex needs offline; must be set before reflex is imported."""
    os.environ.setdefault("REFLEX_BUN_PATH", str(TOOLS / "node_modules/.bin/bun"))
    os.environ.setdefault("REFLEX_CHECK_LATEST_VERSION", "0")
    os.environ.setdefault("REFLEX_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("REFLEX_DIR", str(TOOLS / "reflex"))
    os.environ.setdefault("BUN_INSTALL_CACHE_DIR", str(TOOLS / "bun-cache"))
    if not os.environ.get("NPM_CONFIG_REGISTRY") and shutil.which("npm"):
        os.environ["NPM_CONFIG_REGISTRY"] = subprocess.run(
            ["npm", "config", "get", "registry"], capture_output=True, text=True, check=True
        ).stdout.strip()


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is needed for the browser tests (scripts/test installs Debian's chromium)")
    return path


def screenshot_name(nodeid: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1]) + ".png")


def sign_in(page, base_url: str, email: str, password: str) -> None:
    """Through the /login form, as a user would."""
    page.goto(base_url + "/login")
    page.get_by_test_id("login-email").fill(email)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
