"""Open a local HTML file in headless Chromium and read back the rendered DOM."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# Flags that keep Chromium from reaching the network or needing a display or a sandbox user.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(
        "no Chromium found on PATH: install Debian's `chromium` package (make test does)"
    )


def rendered_dom(html_file: Path, timeout: float = 60.0) -> str:
    """The DOM after the page's load handlers ran (scripts executed, images decoded)."""
    with tempfile.TemporaryDirectory() as profile:
        command = [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        command += ["--dump-dom", Path(html_file).resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or "<body" not in result.stdout:
        raise RuntimeError(f"chromium could not render {html_file}: {result.stderr[-2000:]}")
    return result.stdout


def loaded_pictures(dom: str) -> tuple[int, int]:
    """(loaded, total) pictures as the report's own render check counted them."""
    match = re.search(r"pictures: (\d+) of (\d+) loaded", dom)
    if not match:
        raise ValueError("the page's render check did not run (JavaScript or load event failed)")
    return int(match.group(1)), int(match.group(2))
