"""The report's layout in a real headless Chromium: it fits a laptop screen (1366 × 768) and a
phone (390 × 844) without page-level horizontal scrolling, wide tables scroll inside their own box,
and every claim is one line with its details one click away.

The page is the synthetic run's report of tests/test_report.py (no pipeline). Each width is
measured with every claim's `<details>` closed and open, by a script injected into a copy of the
page that writes its findings into the DOM (read back with `--dump-dom`); screenshots of both
widths (viewport, and the whole page with the claims open) are written under the test's tmp_path,
and their folder is printed.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from html import escape, unescape
from pathlib import Path

import pytest
import yaml

from bigram_subnetworks.cli import main
from bigram_subnetworks.config import validate_config
from bigram_subnetworks.report.html import BADGES
from projects import chromium
from test_report import RAW_CONFIG, Spec, report_argv, write_run

pytestmark = pytest.mark.slow

WIDTHS = {"laptop": (1366, 768), "phone": (390, 844)}

# Loaded in an iframe of the viewport's size (a headless window is at least 500 px wide, a frame
# can be narrower), the script finds every element of the page whose right edge lies beyond the
# frame's width and that no box of its own ancestors clips or scrolls (overflow-x other than
# visible), and writes what it found as JSON into the outer page.
PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="page" style="border:0" width="WIDTH" height="HEIGHT" srcdoc="PAGE"></iframe>
<script>
document.getElementById('page').addEventListener('load', () => {
  const frame = document.getElementById('page');
  const doc = frame.contentDocument, win = frame.contentWindow;
  if (OPEN) doc.querySelectorAll('details').forEach(d => { d.open = true; });
  const width = win.innerWidth;
  const clipped = el => {
    for (let a = el.parentElement; a; a = a.parentElement) {
      if (a === doc.body || a === doc.documentElement) return false;
      if (win.getComputedStyle(a).overflowX !== 'visible') return true;
    }
    return false;
  };
  const wide = [...doc.body.querySelectorAll('*')]
    .filter(el => el.getBoundingClientRect().right > width + 0.5 && !clipped(el))
    .map(el => `${el.tagName.toLowerCase()}.${el.className}`
                + ` right=${Math.round(el.getBoundingClientRect().right)}`);
  const lines = [...doc.querySelectorAll('.claims summary')].map(s => (
    {height: s.getBoundingClientRect().height, cells: s.children.length}));
  const result = {width, scrollWidth: doc.documentElement.scrollWidth,
                  wide: wide.slice(0, 20), nWide: wide.length, lines,
                  lineHeight: parseFloat(win.getComputedStyle(doc.body).lineHeight),
                  boxes: doc.querySelectorAll('.scroll').length};
  const pre = document.createElement('pre');
  pre.id = 'layout-probe';
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script></body></html>"""
OPEN_CLAIMS = (
    "<script>addEventListener('load', () => "
    "document.querySelectorAll('details').forEach(d => { d.open = true; }));</script>"
)


def browse(page: Path, profile: Path, size: tuple[int, int], *args: str) -> str:
    """Run headless Chromium on a page at a window size; its stdout."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += [f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
    command += ["--virtual-time-budget=10000", *args, page.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def measure(html: Path, folder: Path, size: tuple[int, int], open_claims: bool) -> dict:
    """What the layout probe finds on the page at a viewport size (claims open or closed)."""
    probe = PROBE.replace("WIDTH", str(size[0])).replace("HEIGHT", str(size[1]))
    probe = probe.replace("OPEN", "true" if open_claims else "false")
    probe = probe.replace("PAGE", escape(html.read_text("utf-8"), quote=True))
    page = folder / "probe.html"
    page.write_text(probe, "utf-8")
    window = (max(size[0] + 100, 800), size[1] + 100)
    dom = browse(page, folder / "profile", window, "--dump-dom")
    found = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom, re.S)
    assert found, "Chromium rendered nothing"
    return json.loads(unescape(found.group(1)))


def screenshot(html: Path, folder: Path, size: tuple[int, int], open_claims: bool, name: str):
    """A PNG of the page in a window of `size` (claims open or closed); its path."""
    page = folder / f"{name}.html"
    text = html.read_text("utf-8")
    page.write_text(text.replace("</body>", OPEN_CLAIMS + "</body>") if open_claims else text)
    shot = folder / "screenshots" / f"{name}.png"
    shot.parent.mkdir(exist_ok=True)
    browse(page, folder / "profile", size, f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000
    return shot


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic run's index.html, made through `bsn report`."""
    root = tmp_path_factory.mktemp("layout")
    cfg = validate_config(copy.deepcopy(RAW_CONFIG))
    run_dir, _ = write_run(root, cfg, Spec())
    (root / "config.yaml").write_text(yaml.safe_dump(RAW_CONFIG), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(report_argv(cfg, "config.yaml")) == 0
    return run_dir / "report" / "index.html"


@pytest.mark.parametrize("device", list(WIDTHS))
def test_the_report_fits_the_screen_with_claims_closed_and_open(
    device: str, report_html: Path, tmp_path: Path
) -> None:
    size = WIDTHS[device]
    for open_claims in (False, True):
        found = measure(report_html, tmp_path, size, open_claims)
        state = "open" if open_claims else "closed"
        assert found["width"] == size[0]
        assert found["scrollWidth"] <= found["width"], (device, state, found["wide"])
        assert found["nWide"] == 0, (device, state, found["wide"])
        assert found["boxes"] >= 5  # the tables scroll inside their own boxes
        assert found["lines"], "no claim lines"
        assert all(line["cells"] == 4 for line in found["lines"])
        if not open_claims and device == "laptop":  # a line a claim (a long claim wraps once)
            tallest = max(line["height"] for line in found["lines"])
            assert tallest <= 3.5 * found["lineHeight"], found["lines"]
        screenshot(report_html, tmp_path, size, open_claims, f"{device}-{state}")
    screenshot(report_html, tmp_path, (size[0], 9000), True, f"{device}-page")  # all of it
    print(f"screenshots of the report ({device}): {tmp_path / 'screenshots'}")


def test_each_verdict_has_its_own_badge_with_words(report_html: Path) -> None:
    html = report_html.read_text("utf-8")
    classes = [css for css, _ in BADGES.values()]
    assert len(set(classes)) == len(BADGES) == 5  # five verdicts, five colours
    assert len({mark for _, mark in BADGES.values()}) == 5  # and five marks
    for status, (css, mark) in BADGES.items():
        if f'class="badge {css}"' in html:
            assert f'<span class="badge {css}">{mark} {status}</span>' in html
    css = html[html.index("<style>") : html.index("</style>")]
    for name in classes:
        assert f".badge.{name} {{" in css
