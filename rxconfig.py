"""Reflex configuration. Everything else is configured by environment variables (README.md)."""

import os
from pathlib import Path

import reflex as rx

_HERE = Path(__file__).resolve().parent

config = rx.Config(
    app_name="orcapulse_billing",
    # bun comes from the npm registry into .tools/ (scripts/setup.sh): Reflex cannot download it here.
    bun_path=Path(os.environ.get("REFLEX_BUN_PATH", _HERE / ".tools/node_modules/.bin/bun")),
    disable_plugins=[rx.plugins.SitemapPlugin],
    plugins=[
        rx.plugins.RadixThemesPlugin(
            theme=rx.theme(appearance="light", accent_color="purple", gray_color="slate", radius="large")
        )
    ],
    telemetry_enabled=False,
)
