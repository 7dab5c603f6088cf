"""Schemathesis against /api/openapi.json: generated requests (valid and invalid) never get a 5xx,
never a status the document does not list, and responses match their schemas."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orcapulse_billing.api import create_api_app

schema = schemathesis.openapi.from_asgi("/api/openapi.json", create_api_app())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def member_headers(app_engine, app_ledger):
    from .apiutil import Org

    org = Org(app_engine, app_ledger, roles=("member",))
    org.post("purchase", "100")
    org.session("s1")
    return org.auth("member")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_contract(case, member_headers):
    if case.path == "/api/auth/login":
        return  # exercised by test_api.py; generated logins would only trip the rate limiter
    case.call_and_validate(headers=member_headers, checks=CHECKS)
