"""Colours and page-wide CSS of the billing page's views."""

GRAY = "linear-gradient(135deg, #475569 0%, #64748b 100%)"
BLACK = "linear-gradient(135deg, #0f172a 0%, #334155 100%)"
GREEN = "#16a34a"
RED = "#dc2626"

# the Refresh icon's spin, the skeleton's pulse and the low-balance banner's pulsing button
PAGE_CSS = (
    "@keyframes spin{to{transform:rotate(360deg)}}.animate-spin{animation:spin 1s linear infinite}"
    "@keyframes pulse{50%{opacity:.45}}.animate-pulse{animation:pulse 1.6s ease-in-out infinite}"
    ".pulse-ring{box-shadow:0 0 0 0 rgba(22,163,74,.6);animation:ring 1.8s infinite}"
    "@keyframes ring{70%{box-shadow:0 0 0 10px rgba(22,163,74,0)}100%{box-shadow:0 0 0 0 rgba(22,163,74,0)}}"
)

# For dialog contents whose height changes as the server answers (an error appears or clears): Radix
# centres a dialog vertically by default, so a message appearing below a button moved the button under
# the pointer between mouse-down (whose blur sends the typed amount and clears the error) and mouse-up,
# and the click was lost. Top-aligned, nothing above the changing part moves. A new dict per call: Reflex
# adds the component's other attributes (its data-testid) to the dict it is given.


def top_aligned() -> dict[str, str]:
    return {"align": "start"}
