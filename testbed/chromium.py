"""Headless Chromium, for the browser tests and the README's screenshots."""

import shutil

CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

HOW_TO_GET_CHROMIUM = "needs Chromium: apt-get install chromium"


def find_chromium():
    """Return the path of Debian's Chromium, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch(driver, chromium):
    """Start a headless Chromium through a Playwright driver."""
    return driver.chromium.launch(
        executable_path=chromium,
        headless=True,
        # The sandbox needs an unprivileged user; CI runs as root.
        chromium_sandbox=False,
        args=CHROMIUM_FLAGS,
    )
