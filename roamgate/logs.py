"""Operational logging: one line per event, to stderr or a file; never secrets."""

from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str, file: Path | None = None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(file, encoding="utf-8") if file else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger("roamgate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False  # the CLI's own stderr handler would print every line twice
    # asyncssh logs every packet-level event at INFO; keep it to warnings unless debugging.
    logging.getLogger("asyncssh").setLevel("DEBUG" if level == "debug" else "WARNING")
