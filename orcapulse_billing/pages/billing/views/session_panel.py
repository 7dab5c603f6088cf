"""The row detail panel: any transaction (balance before and after, source, who made it and from
which IP address, provider references), and for a usage charge its billing session (agent,
duration, cost breakdown, recording, transcript, post-call analysis)."""

from __future__ import annotations

import reflex as rx

from .history import receipt_link


def _detail(label, value, testid: str | None = None) -> rx.Component:
    return rx.cond(
        value != "",
        rx.hstack(
            rx.text(label, size="2", color_scheme="gray", width="150px", flex_shrink="0"),
            rx.text(value, size="2", word_break="break-all", **({"data_testid": testid} if testid else {})),
            width="100%",
        ),
    )


def session_panel(*, is_open, on_open_change, row, session, entry=None, refs=None, can_download=False) -> rx.Component:
    """`row`: the clicked history row; `session`: its billing session, {} when it has none;
    `entry`: the entry's detail (type, balance_before, balance_after, source, actor, ip,
    auto_recharge, id); `refs`: its provider references, [{label, value}]; `can_download`: its
    receipt (credit note) link is shown."""
    s = session
    r = row
    e = entry
    return rx.dialog.root(
        rx.dialog.content(
            rx.vstack(
                rx.hstack(
                    rx.dialog.title(rx.cond(s.contains("id"), "Billing session", "Transaction"), margin="0"),
                    rx.spacer(),
                    rx.dialog.close(rx.icon_button(rx.icon("x"), variant="ghost", color_scheme="gray")),
                    width="100%",
                    align="center",
                ),
                rx.text(r["description"], weight="medium"),
                receipt_link(r, can_download),
                _detail("Amount", r["amount"]),
                _detail("Date & Time", r["when"]),
                *(
                    [
                        _detail("Type", e["type"]),
                        _detail("Balance before", e["balance_before"], "detail-balance-before"),
                        _detail("Balance after", e["balance_after"], "detail-balance-after"),
                        _detail("Source", e["source"], "detail-source"),
                        _detail("Made by", e["actor"], "detail-actor"),
                        _detail("IP address", e["ip"], "detail-ip"),
                        _detail("Auto-recharge", e["auto_recharge"]),
                        rx.foreach(refs, lambda ref: _detail(ref["label"], ref["value"], "detail-reference")),
                        _detail("Transaction ID", e["id"], "detail-id"),
                    ]
                    if e is not None
                    else []
                ),
                rx.cond(
                    s.contains("id"),
                    rx.vstack(
                        rx.divider(),
                        _detail("Session ID", s["id"]),
                        _detail("Agent", s["agent"]),
                        _detail("Agent ID", s["agent_id"]),
                        _detail("Architecture", s["architecture"]),
                        _detail("Duration", s["duration"]),
                        _detail("Started", s["started"]),
                        _detail("Ended", s["ended"]),
                        _detail("Billed", s["billed"]),
                        rx.heading("Cost breakdown", size="3", padding_top="2"),
                        _detail("Base", s["base"]),
                        _detail("Model / LLM", s["llm"]),
                        _detail("Speech-to-text", s["stt"]),
                        _detail("Text-to-speech", s["tts"]),
                        rx.hstack(
                            rx.text("Total", weight="bold", width="150px", flex_shrink="0"),
                            rx.text(s["total"], weight="bold"),
                            width="100%",
                        ),
                        rx.cond(
                            s["recording"] != "",
                            rx.vstack(
                                rx.heading("Recording", size="3", padding_top="2"),
                                rx.audio(src=s["recording"], controls=True, width="100%", height="40px"),
                                width="100%",
                            ),
                        ),
                        rx.cond(
                            s["transcript"] != "",
                            rx.vstack(
                                rx.heading("Transcript", size="3", padding_top="2"),
                                rx.box(
                                    rx.text(s["transcript"], size="2", white_space="pre-wrap"),
                                    background="var(--gray-2)",
                                    padding="3",
                                    border_radius="8px",
                                    width="100%",
                                    max_height="220px",
                                    overflow_y="auto",
                                ),
                                width="100%",
                            ),
                        ),
                        rx.cond(
                            s["analysis"] != "",
                            rx.vstack(
                                rx.heading("Post-call analysis", size="3", padding_top="2"),
                                rx.text(s["analysis"], size="2", white_space="pre-wrap"),
                                width="100%",
                            ),
                        ),
                        width="100%",
                        spacing="2",
                    ),
                    rx.text(
                        rx.cond(r["type"] == "usage", "No session details were reported for this charge.", ""),
                        size="2",
                        color_scheme="gray",
                    ),
                ),
                spacing="3",
                width="100%",
            ),
            max_width="520px",
            data_testid="session-panel",
        ),
        open=is_open,
        on_open_change=on_open_change,
    )
