"""`ckptlab report` through the real CLI, and the report loaded in headless Chromium.

The browser check copies the report with a small probe script in its head: it records errors
(uncaught, and resources that fail to load), replaces `alert` with a recorder (so an escaped
`<script>alert(1)</script>` that ran would show), and after `load` writes every image's
naturalWidth and the page's script count into the DOM, which `--dump-dom` prints. Console messages
are read from Chromium's log (`--enable-logging=stderr --v=0`), for the probe copy and the report itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the synthetic store builders
from report_fixtures import build_store, sun_dredze_store  # noqa: E402

XSS_TASK = "<script>alert(1)</script>"
XSS_RECIPE = "<img src=x onerror=alert(2)>"
PROBE = """<script>
window.__probe = {errors: [], alerts: []};
window.alert = function (message) { window.__probe.alerts.push(String(message)); };
window.addEventListener('error', function (event) {
  var source = event.target && (event.target.src || event.target.href);
  window.__probe.errors.push(String(event.message || source || 'error'));
}, true);
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (image) { return image.naturalWidth; });
  var out = document.createElement('pre');
  out.id = 'ckptlab-probe';
  out.textContent = JSON.stringify({images: images, errors: window.__probe.errors, alerts: window.__probe.alerts,
    scripts: document.scripts.length, text: document.body.textContent});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    return next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)


def load_in_browser(page: Path, scratch: Path) -> tuple[str, str]:
    """(dumped DOM, console lines) of `page` after load, in headless Chromium."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XDG_CONFIG_HOME": str(scratch / "config"), "XDG_CACHE_HOME": str(scratch / "cache")}
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={scratch / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, "\n".join(console)


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory) -> Path:
    """A sweep with every figure, plus an eval set and a recipe whose names are HTML."""
    root = tmp_path_factory.mktemp("sweep")
    path = sun_dredze_store(root / "sweep" / "results.sqlite")
    build_store(
        path,
        ["world_nli", XSS_TASK],
        [100, 10000],
        {XSS_RECIPE: "world_nli"},
        base=lambda task, step: 0.5,
        tuned=lambda recipe, task, step: 0.7,
        n=40,
        seed=1,
        prefix="html-",
    )
    proc = run_cli("report", str(root / "sweep"), "--out", str(root / "out"), "--bootstrap", "100")
    assert f"report: {root / 'out' / 'report.html'}" in proc.stdout
    assert "finding (ii): " in proc.stdout
    return root / "out"


def test_cli_writes_report_figures_tables_and_findings(sweep_report):
    assert (sweep_report / "report.html").is_file() and (sweep_report / "findings.json").is_file()
    assert len(list((sweep_report / "figures").glob("*.png"))) == 6
    assert len(list((sweep_report / "tables").glob("*.csv"))) == 13


def test_bad_sweep_is_one_line_exit_2(tmp_path):
    proc = run_cli("report", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and f"{tmp_path / 'results.sqlite'}" in proc.stderr
    proc = run_cli("report", "--sweep", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "sweep directory not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (Debian package `chromium`; .ci/run installs it)")
def test_report_renders_in_chromium_without_errors(sweep_report, tmp_path):
    html = (sweep_report / "report.html").read_text(encoding="utf-8")
    figures = len(list((sweep_report / "figures").glob("*.png")))
    probed = sweep_report / "probe.html"  # beside the report, so relative links resolve the same way
    probed.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    dom, console = load_in_browser(probed, tmp_path / "probe")
    found = re.search(r'<pre id="ckptlab-probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    probe = json.loads(
        found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    )
    assert len(probe["images"]) == figures and all(width > 0 for width in probe["images"]), probe["images"]
    assert probe["errors"] == [] and probe["alerts"] == [] and console == ""
    assert probe["scripts"] == 1  # the probe alone: no script came from the data
    assert XSS_TASK in probe["text"] and XSS_RECIPE in probe["text"]  # shown as text
    dom, console = load_in_browser(sweep_report / "report.html", tmp_path / "plain")
    assert console == "" and "Findings" in dom
