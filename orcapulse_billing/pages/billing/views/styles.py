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
