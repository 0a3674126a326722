"""A report opened in a real headless Chromium (Debian's `chromium`, installed by .ci/run), as a
person who downloaded it would: every image and video it references must load and decode."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Appended to a copy of the page: waits until every <img> is complete and every <video> has
# decoded a frame (readyState >= HAVE_CURRENT_DATA) or failed, then writes what it found into the
# DOM that --dump-dom prints. A missing file, an unreadable PNG or a codec the browser cannot
# decode leaves naturalWidth 0 / sets video.error.
CHECKER = """<script>(function () {
  const t0 = Date.now();
  function state() {
    const images = [...document.images].map(i => ({src: i.getAttribute('src'), done: i.complete,
      ok: i.complete && i.naturalWidth > 0}));
    const videos = [...document.querySelectorAll('video')].map(v => ({src: v.getAttribute('src'),
      done: !!v.error || v.readyState >= 2, ok: !v.error && v.readyState >= 2 && v.videoWidth > 0,
      error: v.error ? v.error.code : null}));
    return {images, videos};
  }
  function poll() {
    const s = state();
    if ([...s.images, ...s.videos].every(x => x.done) || Date.now() - t0 > 20000) {
      s.rounds = document.querySelectorAll('section.round').length;
      s.evaluations = document.querySelectorAll('section.evaluation').length;
      s.pairs = document.querySelectorAll('.pair').length;
      s.reasons = [...document.querySelectorAll('.pair .why')].map(e => e.textContent);
      const out = document.createElement('pre');
      out.id = 'media-check';
      out.textContent = JSON.stringify(s);
      document.body.appendChild(out);
    } else {
      setTimeout(poll, 100);
    }
  }
  window.addEventListener('load', poll);
})();</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    return found


def _browser_args(profile: Path) -> list[str]:
    # root in a container: no sandbox; a fresh profile so runs never share state
    return [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}"]


def download_report(run_root: Path, dest: Path) -> Path:
    """What a user downloads of a run to read its report: report.html and report_files/ only."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run_root / "report.html", dest / "report.html")
    shutil.copytree(run_root / "report_files", dest / "report_files", dirs_exist_ok=True)
    return dest / "report.html"


def check_page(page: Path, tmp: Path) -> dict:
    """Open a copy of ``page`` (beside it, so relative links resolve) with the checker; returns its findings."""
    probe = page.with_name(f".check-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECKER + "</body>"), encoding="utf-8")
    try:
        result = subprocess.run([*_browser_args(tmp / "chromium-profile"), "--virtual-time-budget=30000",
                                 "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180)
    finally:
        probe.unlink()
    found = re.search(r"<pre id=\"media-check\">(.*?)</pre>", result.stdout, re.S)
    assert found, f"the checker did not finish: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def broken_media(findings: dict) -> list[dict]:
    return [m for m in (*findings["images"], *findings["videos"]) if not m["ok"]]


def screenshot(page: Path, out: Path, tmp: Path, width: int = 1280, height: int = 2000) -> None:
    subprocess.run([*_browser_args(tmp / "chromium-shot"), "--hide-scrollbars", f"--window-size={width},{height}",
                    "--virtual-time-budget=10000", f"--screenshot={out}", page.as_uri()],
                   capture_output=True, timeout=180, check=True)
