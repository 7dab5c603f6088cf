"""The billing page's views: component functions that take the vars and event handlers they show
and trigger as arguments, never a State class; page.py wires BillingState into them."""
