"""Where the documentation lives, so every warning can point at its troubleshooting entry."""

from __future__ import annotations

DOCS_ROOT = "https://pinbackend.readthedocs.io/en/latest"


def troubleshooting(anchor: str) -> str:
    """URL of one entry of the troubleshooting page (``anchor`` is its heading's slug)."""
    return f"{DOCS_ROOT}/troubleshooting/#{anchor}"
