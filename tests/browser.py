"""Real-browser helpers: Debian's Chromium driven by Playwright, and screenshots a person can look at.

Playwright's own browser download is not used (it cannot reach its CDN here, and a pinned build
would drift from what the machine has): `make browser` installs Debian's `chromium` package and
tests/test_browser.py launches it by path. Only test code imports this module.
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ARTIFACTS = TESTS / "artifacts"  # git-ignored: screenshots and the downloaded PDF land here
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))

# As root the sandbox must be off; the rest keeps Chromium from calling home on a closed network
# (and from slowing every test down retrying it).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

SESSION_PATH = re.compile(r"/sessions/([A-Za-z0-9_-]+)$")


def launch(playwright):
    """Debian's Chromium, headless."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def screenshot(page, name: str) -> Path:
    """Save the whole page as tests/artifacts/<name>.png and return the path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@dataclass
class Events:
    """What a page did besides what a test asked: dialogs, script errors, CSP refusals, full loads."""

    dialogs: list = field(default_factory=list)        # (type, message); every dialog is accepted
    page_errors: list = field(default_factory=list)    # uncaught exceptions in the page's scripts
    csp_violations: list = field(default_factory=list)  # console messages about a refused resource
    refused_frames: list = field(default_factory=list)  # a framed page whose own policy forbids framing
    loads: list = field(default_factory=list)          # URLs of documents loaded in the main frame

    @classmethod
    def attach(cls, page) -> "Events":
        events = cls()

        def on_dialog(dialog):
            events.dialogs.append((dialog.type, dialog.message))
            dialog.accept()  # a confirm() says yes; an alert() (which must never come) is closed

        def on_console(message):
            if "Content Security Policy" in message.text:
                # frame-ancestors is the framed page's policy (e.g. an error page in the report
                # frame), not something this page's own code did
                refused = "frame-ancestors" in message.text
                (events.refused_frames if refused else events.csp_violations).append(message.text)

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: events.page_errors.append(str(error)))
        page.on("console", on_console)
        page.on("load", lambda: events.loads.append(page.url))
        return events


def csp_directive(policy: str, name: str):
    """The source list of one directive of a Content-Security-Policy header, or None if absent."""
    for directive in policy.split(";"):
        parts = directive.split()
        if parts and parts[0].lower() == name:
            return parts[1:]
    return None


# -- layout measurements --------------------------------------------------------------------------

# Where an element's text was laid out: the client rectangles of its text nodes (not of its boxes,
# and not ::before content), grouped into lines. A rectangle that starts below the bottom of the
# line before it starts a new line; one beside it on the same line does not.
_TEXT_LAYOUT = """element => {
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  const rects = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const range = document.createRange();
    range.selectNodeContents(node);
    for (const rect of range.getClientRects()) if (rect.width > 0 && rect.height > 0) rects.push(rect);
  }
  rects.sort((a, b) => a.top - b.top);
  let lines = 0, bottom = -Infinity;
  for (const rect of rects) {
    if (rect.top >= bottom - 1) { lines += 1; bottom = rect.bottom; } else { bottom = Math.max(bottom, rect.bottom); }
  }
  const box = element.getBoundingClientRect();
  return {
    lines,
    text: rects.length ? {left: Math.min(...rects.map(r => r.left)), right: Math.max(...rects.map(r => r.right)),
                          top: rects[0].top, bottom: Math.max(...rects.map(r => r.bottom))} : null,
    box: {left: box.left, right: box.right, top: box.top, bottom: box.bottom},
    clipped: element.scrollWidth > element.clientWidth + 1,
  };
}"""


def text_layout(locator) -> dict:
    """How `locator`'s element laid out its text, in viewport pixels.

    lines: how many lines the text takes (1: it did not wrap); text: the box around the text;
    box: the element's border box; clipped: its content is wider than it shows (cut off or scrolled).
    """
    return locator.evaluate(_TEXT_LAYOUT)


def inside(inner: dict, outer: dict, slack: float = 0.5) -> bool:
    """Whether box `inner` lies within box `outer` horizontally (left/right in the same coordinates)."""
    return inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack


def horizontal_overflow(page) -> dict:
    """The document's scroll width against the viewport's width: wider means a horizontal scroll bar."""
    return page.evaluate("() => ({scrollWidth: document.documentElement.scrollWidth, "
                         "innerWidth: window.innerWidth})")
