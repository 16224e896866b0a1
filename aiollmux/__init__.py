"""aiollmux: one OpenAI-compatible endpoint for many local LLMs, switching through hooks."""

from __future__ import annotations

__version__ = "0.1.0"
