"""Headless Chromium for browser tests (imported as `from browser import ...`, like conftest).

Debian's chromium and chromium-driver (scripts/setup.sh installs them), driven through selenium with explicit paths:
Selenium Manager is never asked for a driver or a browser, so nothing is downloaded. WebGL runs on SwiftShader
(software GL on the CPU), which is slow but deterministic and needs no GPU or display.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in a container: the setuid/namespace sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--use-gl=swiftshader",
    "--enable-unsafe-swiftshader",  # WebGL on SwiftShader (otherwise refused for software GL)
    "--hide-scrollbars",
    "--mute-audio",
)


def chromium_available() -> bool:
    """True when Debian's chromium and chromedriver are installed and selenium imports."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return False
    try:
        import selenium.webdriver  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def headless_chromium(width: int = 1024, height: int = 768, page_load_timeout_s: float = 60):
    """A selenium webdriver of headless Chromium with a `width` x `height` viewport and a fresh temporary profile;
    the driver is always quit and the profile removed when the block ends. The browser console (every level) is
    kept for `console_log`."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, should anything reach it, downloads nothing
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="sceneloc-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={int(width)},{int(height)}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(page_load_timeout_s)
        driver.set_script_timeout(page_load_timeout_s)
        _set_viewport(driver, width, height)
        yield driver
    finally:
        try:
            if driver is not None:
                driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def _set_viewport(driver, width: int, height: int) -> None:
    """--window-size is the outer window, which headless Chromium counts with an (invisible) toolbar: grow the window
    by the difference so the page itself (window.innerWidth x innerHeight, screenshots) is `width` x `height`."""
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    outer = driver.get_window_size()
    if inner != [width, height]:
        driver.set_window_size(outer["width"] + width - inner[0], outer["height"] + height - inner[1])


def console_log(driver) -> list[str]:
    """The browser console messages since the last call ("LEVEL message" each); [] when they cannot be read."""
    try:
        return [f"{entry.get('level')} {entry.get('message')}" for entry in driver.get_log("browser")]
    except Exception:  # the browser is gone, or logging was not enabled
        return []


def viewer_state(driver):
    """The page's `window.scenelocViewer` (a dict), or None when the page has none (or cannot be asked)."""
    try:
        return driver.execute_script("return window.scenelocViewer ? Object.assign({}, window.scenelocViewer) : null")
    except Exception:
        return None


def webgl_renderer(driver) -> str | None:
    """The WebGL renderer of the current page ("... SwiftShader ..."), or None when WebGL is unavailable."""
    return driver.execute_script(
        "const gl = document.createElement('canvas').getContext('webgl2')"
        " || document.createElement('canvas').getContext('webgl');"
        "if (!gl) return null;"
        "const info = gl.getExtension('WEBGL_debug_renderer_info');"
        "return String(info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER));")


def wait_for(driver, js_expression: str, timeout_s: float = 30, poll_s: float = 0.1):
    """Polls `return <js_expression>` in the page until it is truthy and returns that value. Raises AssertionError
    after `timeout_s` seconds with the page's window.scenelocViewer state, the last script error (if any) and the
    browser console log in the message."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while True:
        try:
            value = driver.execute_script(f"return ({js_expression});")
            last_error = None
            if value:
                return value
        except Exception as e:  # the page is navigating, or the expression throws until the page is ready
            last_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    state = viewer_state(driver)
    log = "\n  ".join(console_log(driver)) or "(empty)"
    url = ""
    try:
        url = driver.current_url
    except Exception:
        pass
    raise AssertionError(
        f"timed out after {timeout_s:g} s waiting for `{js_expression}` at {url}\n"
        f"window.scenelocViewer = {json.dumps(state)}\n"
        + (f"last script error: {last_error}\n" if last_error else "")
        + f"browser console:\n  {log}")
