"""`/billing`: the Billing & Credits page (document 003), for the signed-in organization.

One package per page, as Reflex's code-structure guide lays out a large page:

    data.py       the page's reads (account, history page, 30-day spend, auto-recharge policy,
                  a billing session), off the event loop, as display-ready strings; no Reflex
    state.py      BillingPage: what the page shows, load and reload, filter, paging, row panel
    figures.py    the vars one read makes (balance, cards, history page), the same for every tab
                  showing that view; no Reflex state
    fanout.py     live updates: per worker, one listener per organization, one read per view, the
                  same update sent to each tab; LiveSync, the middleware that lets a tab's state
                  take the figures it was sent
    live.py       LiveUpdates: a tab subscribing to its organization's updates, the 30 s heartbeat
    purchases.py  Purchases: Add Credits (checkout, quick purchase, saved cards)
    auto_recharge.py  AutoRechargeForm: the auto-recharge panel (saved settings live, edits per tab)
    views/        component functions taking vars and event handlers as arguments, no State
    page.py       the /billing and / routes: wires BillingState into the views

BillingState is one Reflex state, a substate of SessionState, composed here from the four mixins.
It is defined in this module on purpose: a state's name comes from its module and class name, so it
stays `orcapulse_billing___pages___billing____billing_state`, the name the frontend, the Redis state
manager (which also pickles it by `orcapulse_billing.pages.billing.BillingState`) and bench/live.py
know. Moving or renaming it, or turning a mixin into a substate, changes that name.
"""

from ...state import SessionState
from .auto_recharge import AutoRechargeForm
from .live import LiveUpdates
from .purchases import Purchases
from .state import BillingPage


class BillingState(BillingPage, LiveUpdates, Purchases, AutoRechargeForm, SessionState):
    """The billing page's state. Mixins first, SessionState (the parent state) last."""


__all__ = ["BillingState"]
