"""The HTML reports in a real headless browser (Debian's Chromium, /usr/bin/chromium).

Run: ``.ci/install-browser && .venv/bin/python -m pytest -m browser``. Each report is opened
with a fresh profile: no console message at all (the reports carry no script, so any message
is a fault), a full-page screenshot kept under ``tests/artifacts/`` (git-ignored), and no two
text labels of a plot overlapping, measured on the rendered SVG text boxes by a script run in a
copy of the page.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit import FairnessSpec, PricingSpec, fairness_audit, pricing_audit, write_report
from simulations.transactions import generate_transactions

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

OVERLAP_JS = """<script>
(function () {
  var out = [], counts = [];
  document.querySelectorAll('svg').forEach(function (svg, si) {
    var t = Array.prototype.map.call(svg.querySelectorAll('text'), function (e) {
      return {s: e.textContent.trim(), r: e.getBoundingClientRect()};
    }).filter(function (x) { return x.s && x.r.width > 0 && x.r.height > 0; });
    counts.push(t.length);
    for (var i = 0; i < t.length; i++) for (var j = i + 1; j < t.length; j++) {
      var a = t[i].r, b = t[j].r;
      var w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      var h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 1 && h > 1) out.push([si, t[i].s, t[j].s, Math.round(w), Math.round(h)]);
    }
  });
  var pre = document.createElement('pre');
  pre.id = 'overlap-result';
  pre.textContent = JSON.stringify({overlaps: out, texts: counts,
                                    height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
})();
</script>"""


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run .ci/install-browser (Debian's chromium package)")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


def overlaps(page: Path, tmp: Path) -> dict:
    probe = tmp / f"probe-{page.parent.name}.html"
    probe.write_text(page.read_text().replace("</body>", OVERLAP_JS + "</body>"))
    res = chromium(probe.as_uri(), tmp / "profile-probe", "--window-size=1280,2000", "--virtual-time-budget=5000",
                   "--dump-dom")
    m = re.search(r'<pre id="overlap-result">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stderr[-2000:]
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("reports")
    rng = np.random.default_rng(0)
    n = 30_000
    g = rng.choice(["female", "male", "non-binary or not stated"], n, p=[0.48, 0.48, 0.04])
    age = rng.choice(["18-29", "30-44", "45-64", "65 and over"], n)
    region = rng.choice(["north-east", "south-west", "capital region"], n)
    y = (rng.random(n) < 0.3 + 0.05 * (age == "65 and over")).astype(int)
    s = np.clip(rng.normal(0.3 + 0.3 * y + 0.05 * (g == "male"), 0.2), 0, 1)
    frame = pd.DataFrame({"gender": g, "age_band": age, "region": region, "churned": y, "score": s})
    fair = fairness_audit(frame, FairnessSpec(label="churned", score="score", groups=["gender", "age_band", "region"],
                                              intersect=True, bootstrap=200))
    tx = generate_transactions(n_rows=60_000, n_customers=6000, n_items=80, n_weeks=6, premium_pct=2.0, seed=3)
    price = pricing_audit(tx, PricingSpec(price="price", item="item_id", time="week", window="raw",
                                          groups=["loyalty", "data_richness"], by=["category"],
                                          references={"loyalty": "new"}, customer="customer_id",
                                          returning="returning"))
    out = {}
    for name, rep in (("fairness", fair), ("pricing", price)):
        _, h = write_report(rep, tmp / name)
        out[name] = h
    return out


def test_detectors_catch_what_they_look_for(tmp_path):
    """The console check sees a console error and the overlap check sees two overlapping labels."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><body><svg width='200' height='50'><text x='10' y='20'>first label</text>"
                    "<text x='14' y='22'>second label</text></svg><script>console.error('boom')</script></body></html>")
    res = chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert any("boom" in m for m in console_messages(res.stderr))
    found = overlaps(page, tmp_path)
    assert found["overlaps"] and found["overlaps"][0][1:3] == ["first label", "second label"]


@pytest.mark.parametrize("name", ["fairness", "pricing"])
def test_report_renders_without_console_messages_or_overlapping_labels(reports, name, tmp_path):
    page = reports[name]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report-{name}.png"
    shot.unlink(missing_ok=True)
    found = overlaps(page, tmp_path)
    height = min(int(found["height"]) + 40, 16_000)  # the whole page in one screenshot
    res = chromium(page.as_uri(), tmp_path / "profile", f"--window-size=1280,{height}", f"--screenshot={shot}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert console_messages(res.stderr) == []
    assert shot.exists() and shot.stat().st_size > 10_000
    assert found["texts"] and min(found["texts"]) > 5  # the plots' labels are text, and were measured
    assert found["overlaps"] == [], found["overlaps"][:10]
    if name == "fairness":
        html = page.read_text()
        assert "gender&amp;age_band&amp;region" in html and "non-binary or not stated &amp; 65 and over" in html
