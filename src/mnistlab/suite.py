"""``run all``: every study of a profile and protocol, one after another, with a manifest.

The studies, their profiles and summary lines come from :mod:`mnistlab.registry`. ``full``
runs the studies as specified; ``quick`` is a demonstration that finishes in a few minutes on a
2-core CPU (fewer seeds and epochs, test subsets) and is labelled as such on every page of its
report. Each study's results live under its config hash, so a finished study is loaded, not
recomputed, and an interrupted one resumes where its checkpoints left it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnistlab import registry, runs
from mnistlab.errors import MnistlabError
from mnistlab.progress import Progress

MANIFEST = runs.MANIFEST


def run_all(
    *,
    profile: str,
    root: Path,
    force: bool,
    seed: int,
    progress: Progress,
    execute: Callable[..., tuple[Path, Any]],
    device: str = "auto",
    protocol: str = "both",
    with_: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the studies of ``profile`` one after another and write ``root/manifest.json``.

    ``execute(study, config, force=…, **options)`` runs one study in its folder (the CLI
    passes one that adds a log file).
    """
    configs = registry.profile_configs(profile, seed, device, protocol, with_)
    manifest: dict[str, Any] = {
        "profile": profile,
        "protocol": protocol,
        "with": list(with_),
        "command": " ".join(["mnistlab", *sys.argv[1:]]) or "mnistlab",
        "folders": {},
        "wall_seconds": {},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    old = root / MANIFEST
    if old.is_file():  # keep the record of wall times from an earlier (interrupted) call
        try:
            prev = runs.read_json(old)
        except MnistlabError:
            prev = {}  # a damaged manifest is rewritten below
        if prev.get("profile") == profile:
            manifest["wall_seconds"] = prev.get("wall_seconds", {})
            manifest["folders"] = dict(prev.get("folders", {}))  # other protocols' studies
    for study, config in configs.items():
        folder = runs.run_dir(root, study, config)
        was_done = runs.is_complete(folder) and not force
        t0 = time.perf_counter()
        folder, metrics = execute(study, config, force=force, **registry.get(study).in_suite)
        if not was_done:
            manifest["wall_seconds"][study] = time.perf_counter() - t0
        manifest["folders"][study] = str(folder.relative_to(root))
        progress.message(
            registry.summary_line(study, metrics)
            + (" (already finished: loaded)" if was_done else "")
        )
        runs.write_json(root / MANIFEST, manifest)
    manifest["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runs.write_json(root / MANIFEST, manifest)
    return manifest


__all__ = ["run_all"]
