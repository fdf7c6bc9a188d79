import re
import shutil
import subprocess
import sys

import pytest

from mnistlab.cli import main
from mnistlab.report.build import build_report
from tests import fake_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def report(tmp_path):
    fake_results.make(tmp_path)
    return build_report(tmp_path)


def test_report_answers_from_numbers_and_is_self_contained(report):
    html_path, md_path = report
    html = html_path.read_text()
    assert "lowest test error at 10 images per class is 10.00 ± 1.00 %" in html
    assert "vgg19 SKIPPED" in html
    assert "rotation: used — median |deviation| 6°" in html and "zoom: not used" in html
    assert "batch norm reached" in html.lower() or "Batch norm: reached 98 %" in html
    assert "Caching the frozen layers made training 4.0× faster" in html
    assert "Transfer did NOT help here" in html  # scratch 0.9 beats every transfer variant
    assert "Does dropout help? Yes: dropout 0.2" in html
    assert html.count("QUICK PROFILE") >= 6  # on every study section
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) == 12 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "http://" not in html and "https://" not in html
    md = md_path.read_text()
    assert "| resnet50 | 10 |" in md and "](fewshot/abc123/error_vs_size.png)" in md


def test_report_without_results_says_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    html_path, _ = build_report(tmp_path / "empty")
    assert html_path.read_text().count("Not available") == 5


def test_report_cli(tmp_path, capsys):
    fake_results.make(tmp_path, profile="full")
    assert main(["report", "--results", str(tmp_path)]) == 0
    assert "QUICK" not in (tmp_path / "report.html").read_text()
    assert main(["report", "--results", str(tmp_path / "nope")]) == 2


def test_report_does_not_import_torch(tmp_path):
    fake_results.make(tmp_path)
    code = (
        "import sys; from mnistlab.report.build import build_report; "
        f"build_report({str(tmp_path)!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it)")
def test_report_renders_in_headless_chromium(report):
    from playwright.sync_api import sync_playwright

    html_path, _ = report
    errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html_path.resolve().as_uri(), wait_until="load")
        loaded = page.evaluate(
            "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
        )
        title = page.title()
        browser.close()
    assert title == "mnistlab report"
    assert len(loaded) == 12 and all(loaded)
    assert errors == []
