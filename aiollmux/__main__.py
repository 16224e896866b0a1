from __future__ import annotations

from aiollmux.cli import main

main()
