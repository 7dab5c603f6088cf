"""A plain HTML form that the browser submits itself.

Reflex's own forms always call preventDefault and route the data through the websocket; sign-in
and sign-out must instead reach the backend as a real POST so the server can set or clear the
HttpOnly session cookie. The action is resolved in the browser from Reflex's own backend address,
with the page's host name, so the cookie lands on the host the page and its socket use.

In production Reflex prerenders the pages, and React's hydration keeps the prerendered attributes:
an action or link built with the build's host name ("localhost") would stay so on a page opened
as 127.0.0.1 or by another name. So the address is set again from the page's own location at the
moment it is used (submit, click), before the browser reads it.
"""

from __future__ import annotations

import reflex as rx
from reflex_base.utils.imports import ImportVar
from reflex_base.vars.base import Var, VarData
from reflex_components_core.el.elements.base import BaseHTML


class NativeForm(BaseHTML):
    tag = "form"
    action: Var[str]
    method: Var[str]


def backend_url(path: str) -> Var:
    return Var(
        _js_expr=f"(getBackendURL(env.UPLOAD).origin + {path!r})",
        _var_type=str,
        _var_data=VarData(
            imports={
                "$/utils/state": [ImportVar(tag="getBackendURL")],
                "$/env.json": [ImportVar(tag="env", is_default=True)],
            }
        ),
    ).to(str)


def resolve_on_use(attribute: str, url: Var) -> Var:
    """An event handler that sets the element's `attribute` to `url` as evaluated now, in the page."""
    return Var(
        _js_expr=f"((event) => {{ event.currentTarget.{attribute} = {url}; }})", _var_data=url._get_all_var_data()
    )


def native_form(*children: rx.Component, path: str, **props) -> rx.Component:
    action = backend_url(path)
    return NativeForm.create(
        *children, action=action, method="post", custom_attrs={"onSubmit": resolve_on_use("action", action)}, **props
    )
