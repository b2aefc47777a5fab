"""Headless Chromium with its network off, and PNG export of report figures through kaleido.

kaleido 1.x drives a Chromium it finds on the machine; started plainly, Chromium contacts
Google's services, and kaleido's page loads MathJax from a CDN. ``export_png`` gives kaleido a
wrapper script that adds ``CHROMIUM_FLAGS`` and turns MathJax off, and kaleido loads the
plotly.js that ships with plotly, so the export needs no network.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CHROMIUM_FLAGS", "ExportError", "chromium_command", "export_png", "find_chromium"]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class ExportError(RuntimeError):
    """A figure export that cannot run here; the message names what to install."""


def find_chromium() -> str | None:
    """Return the path of a Chromium or Chrome executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_command(user_data_dir: str | Path, *arguments: str) -> list[str]:
    """Return a headless Chromium command line with the network-off flags and a fresh profile."""
    chromium = find_chromium()
    if chromium is None:
        raise ExportError("Chromium not found on PATH; install it, for example with `apt-get install -y chromium`")
    return [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", *arguments]


def _wrapper_script(folder: Path, chromium: str) -> Path:
    """Write an executable that starts ``chromium`` with ``CHROMIUM_FLAGS`` and its arguments."""
    script = folder / "chromium"
    flags = " ".join(CHROMIUM_FLAGS)
    script.write_text(f'#!/bin/sh\nexec "{chromium}" {flags} "$@"\n', encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def export_png(figures: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write each figure that is not None as ``folder/NAME.png``; return the written paths.

    Raises:
        ExportError: when kaleido or Chromium is missing.
    """
    try:
        import kaleido  # noqa: F401 - checked here so the error names the package
    except ImportError:
        raise ExportError("PNG export needs kaleido: pip install 'ftsearch[png]'") from None
    chromium = find_chromium()
    if chromium is None:
        raise ExportError("PNG export needs Chromium on PATH; install it, for example with `apt-get install -y chromium`")
    import kaleido

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    saved_browser = os.environ.get("BROWSER_PATH")
    with tempfile.TemporaryDirectory(prefix="ftsearch-chromium-") as scratch:
        os.environ["BROWSER_PATH"] = str(_wrapper_script(Path(scratch), chromium))
        try:
            for name, figure in figures.items():
                if figure is None:
                    continue
                path = folder / f"{name}.png"
                # kaleido directly, because plotly's write_image cannot turn MathJax off:
                # plotly 7.1 passes pio.defaults.mathjax on only when it is truthy.
                options = {"format": "png", "width": figure.layout.width or 1000, "height": figure.layout.height or 500}
                path.write_bytes(kaleido.calc_fig_sync(figure.to_dict(), opts=options, kopts={"mathjax": False}))
                written.append(path)
        finally:
            if saved_browser is None:
                os.environ.pop("BROWSER_PATH", None)
            else:
                os.environ["BROWSER_PATH"] = saved_browser
    logger.info("Wrote %d figures as PNG to %s", len(written), folder)
    return written
