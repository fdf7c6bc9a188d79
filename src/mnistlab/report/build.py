"""``mnistlab report``: results on disk → ``report.html`` (self-contained) and ``report.md``.

Never trains and never imports torch: it reads verified JSON result files and PNG figures. The
run folders come from the manifest that ``run all`` writes (``results/manifest.json``); without
one, the most recently finished run of each study is used. A study whose result files do not
verify is shown as not available, with the file and the command that recomputes it.
"""

from __future__ import annotations

import base64
import html
import os
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

from mnistlab import registry, runs
from mnistlab.errors import CorruptFileError
from mnistlab.report.sections import Section, environment

MANIFEST = runs.MANIFEST

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mnistlab report</title>
<link rel="icon" href="data:,">
<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45;overflow-wrap:anywhere}
code{word-break:break-all}
td,th{overflow-wrap:normal}
@media (max-width:600px){body{margin:1em auto;font-size:15px}h1{font-size:1.5em}}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
.banner{background:#fff3cd;border:1px solid #e0c36c;padding:.5em 1em;margin:1em 0;font-weight:600}
.missing{color:#a33;font-style:italic}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f2f2f2}
caption{caption-side:bottom;font-size:.85em;color:#555;text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
nav a{margin-right:1em;display:inline-block}
</style></head><body>
<h1>mnistlab report</h1>
<p>Generated {{ generated }} from <code>{{ root }}</code>. Every number below is read from
the verified results files of the runs listed at the end, and every verdict (better, worse,
significant, helped, undone) is computed from those numbers with the test named beside it.
Published results come from <code>published.json</code> with their sources.</p>
{% if banner %}<div class="banner">{{ banner }}</div>{% endif %}
<nav>{% for s in sections %}<a href="#{{ s.key }}">{{ s.title }}</a>{% endfor %}</nav>
{% for s in sections %}
<section id="{{ s.key }}">
<h2>{{ s.title }}</h2>
{% if banner and s.key != "environment" %}<div class="banner">{{ banner }}</div>{% endif %}
{% if s.missing %}<p class="missing">Not available: {{ s.missing }}</p>{% endif %}
{% for p in s.paragraphs %}<p>{{ p }}</p>{% endfor %}
{% if s.bullets %}<ul>{% for b in s.bullets %}<li>{{ b }}</li>{% endfor %}</ul>{% endif %}
{% for t in s.tables %}
<div class="scroll"><table>{% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<thead><tr>{% for h in t.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for r in t.rows %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table></div>
{% endfor %}
{% for src, cap in s.figures %}
<figure><img src="{{ src }}" alt="{{ cap }}"><figcaption>{{ cap }}</figcaption></figure>
{% endfor %}
</section>
{% endfor %}
</body></html>
"""


def latest_complete(root: Path, study: str) -> Path | None:
    """The most recently finished run folder of ``study`` (``metrics.json`` present)."""
    base = root / study
    if not base.is_dir():
        return None
    done = [p for p in base.iterdir() if p.is_dir() and runs.is_complete(p)]
    return max(done, key=lambda p: (p / runs.COMPLETE_MARKER).stat().st_mtime, default=None)


def find_runs(root: Path) -> tuple[dict[str, Path | None], dict[str, Any] | None, list[str]]:
    """The run folder of every study, the manifest, and problems met on the way."""
    problems: list[str] = []
    manifest = None
    if (root / MANIFEST).is_file():
        try:
            manifest = runs.read_json(root / MANIFEST)
        except CorruptFileError as exc:
            problems.append(f"{exc}; using the newest finished runs instead")
    folders: dict[str, Path | None] = {}
    for study in registry.STUDIES:
        listed = (manifest or {}).get("folders", {}).get(study)
        folder = Path(listed) if listed else None
        if folder is not None and not folder.is_absolute():
            folder = root / folder
        if folder is None or not runs.is_complete(folder):
            folder = latest_complete(root, study)
        folders[study] = folder
    return folders, manifest, problems


def _study_sections(
    study: str, folder: Path | None, problems: list[str], usable: dict[str, Path | None]
) -> list[Section]:
    """A study's section(s) from the builder its registry entry names; a result file that
    does not verify makes it 'not available' with the file named and the command that
    recomputes it."""
    entry = registry.get(study)
    baseline = usable.get(entry.baseline) if entry.baseline else None
    try:
        out = entry.report(folder, baseline)
    except CorruptFileError as exc:
        text = f"{exc}; recompute it with `{entry.command} --force` (or `run all --force`)"
        problems.append(text)
        return [Section(study, entry.title, missing=text)]
    return out if isinstance(out, list) else [out]


def build_sections(root: Path) -> tuple[list[Section], dict[str, Any] | None, list[str]]:
    """Every study's sections in registry order, numbered, then the environment."""
    folders, manifest, problems = find_runs(root)
    secs: list[Section] = []
    usable: dict[str, Path | None] = {}
    for study in registry.STUDIES:
        if registry.get(study).opt_in and folders[study] is None:
            continue  # an opt-in study nobody asked for is not a gap in the report
        before = len(problems)
        secs += _study_sections(study, folders[study], problems, usable)
        usable[study] = folders[study] if len(problems) == before else None
    for number, sec in enumerate(secs, 1):
        sec.title = f"{number}. {sec.title}"
    return [*secs, environment(manifest, usable)], manifest, problems


def _banner(manifest: dict[str, Any] | None) -> str:
    if manifest and manifest.get("profile") == "quick":
        return (
            "QUICK PROFILE — a short demonstration (fewer seeds and epochs, test subsets). "
            "These numbers are not the studies' results; run `mnistlab run all --profile "
            "full` for those."
        )
    return ""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(secs: list[Section], root: Path, banner: str) -> str:
    env = Environment(autoescape=select_autoescape(default=True))
    view = []
    for s in secs:
        figs = [(_data_uri(p), cap) for p, cap in s.figures]  # embedded: no external files
        view.append({**s.__dict__, "figures": figs})
    return env.from_string(_TEMPLATE).render(
        sections=view,
        banner=banner,
        root=str(root),
        generated=time.strftime("%Y-%m-%d %H:%M %Z"),
    )


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(secs: list[Section], out_dir: Path, banner: str) -> str:
    lines = ["# mnistlab report", ""]
    if banner:
        lines += [f"> **{banner}**", ""]
    for s in secs:
        lines += [f"## {s.title}", ""]
        if banner and s.key != "environment":
            lines += [f"> **{banner}**", ""]
        if s.missing:
            lines += [f"*Not available: {s.missing}*", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        lines += [f"- {b}" for b in s.bullets] + ([""] if s.bullets else [])
        for t in s.tables:
            lines.append("| " + " | ".join(_md_escape(h) for h in t.headers) + " |")
            lines.append("|" + "---|" * len(t.headers))
            lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in t.rows]
            lines += ([f"*{t.caption}*"] if t.caption else []) + [""]
        for path, cap in s.figures:
            rel = os.path.relpath(path, out_dir)
            lines += [f"![{html.escape(cap)}]({rel})", ""]
    return "\n".join(lines) + "\n"


def build_report(
    root: Path | str, out_dir: Path | str | None = None, problems: list[str] | None = None
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir`` (default: ``root``); what could
    not be used is appended to ``problems``."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root
    secs, manifest, found = build_sections(root)
    if problems is not None:
        problems += found
    banner = _banner(manifest)
    html_path = runs.atomic_write_text(out_dir / "report.html", render_html(secs, root, banner))
    md_path = runs.atomic_write_text(out_dir / "report.md", render_markdown(secs, out_dir, banner))
    return html_path, md_path
