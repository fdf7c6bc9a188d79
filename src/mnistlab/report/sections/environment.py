"""The closing section: which runs, seeds, machines and data the report was built from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnistlab import runs
from mnistlab.report.sections.common import Section, Table


def environment(manifest: dict[str, Any] | None, folders: dict[str, Path | None]) -> Section:
    sec = Section("environment", "Environment and provenance")
    rows = []
    for study, folder in folders.items():
        if folder is None:
            rows.append([study, "—", "—", "—", "—"])
            continue
        cfg = runs.read_json(folder / "config.json")
        m = runs.read_json(folder / "metrics.json")
        env = cfg.get("environment", {})
        wall = (manifest or {}).get("wall_seconds", {}).get(study, m.get("wall_seconds"))
        rows.append(
            [
                study,
                str(folder),
                f"seed {cfg.get('seed')}",
                _wall(wall, runs.sessions(folder)),
                f"torch {env.get('torch')}, {cfg.get('device', 'cpu')}, "
                f"{env.get('cpu_count')} CPUs ({env.get('torch_threads', '?')} threads), "
                f"{env.get('cuda') or 'no GPU'}",
            ]
        )
    sec.tables.append(Table(["study", "results folder", "seed", "wall time", "environment"], rows))
    any_cfg = next((runs.read_json(f / "config.json") for f in folders.values() if f), None)
    if any_cfg:
        sec.bullets.extend(_software_and_data(any_cfg))
    fs = folders.get("fewshot")
    if fs is not None:
        m = runs.read_json(fs / "metrics.json")
        for name, r in m["backbones"].items():
            flag = "RANDOM (not ImageNet)" if r["random_weights"] else "ImageNet"
            sec.bullets.append(
                f"{name} weights: {flag} — {r['weights_source']}, "
                f"digest {r['weights_digest'][:16]}…"
            )
        for name, reason in m.get("skipped", {}).items():
            sec.bullets.append(f"{name} weights: MISSING — skipped. {reason}")
    if manifest:
        sec.bullets.append(
            f"Profile: {manifest.get('profile')}; command: {manifest.get('command')}; "
            f"finished {manifest.get('finished')}"
        )
        if manifest.get("jobs", 1) > 1:
            sec.bullets.append(
                f"Studies ran {manifest['jobs']} at a time, each in a process of its own, so "
                "their wall times overlap; a study's last digits depend on its thread count "
                "(shown per study), as they do on the CPU."
            )
    return sec


def _wall(seconds: Any, sessions: int) -> str:
    if not isinstance(seconds, int | float):
        return "—"
    if sessions > 1:
        return f"{seconds:.0f} s (the last of {sessions} sessions: resumed)"
    return f"{seconds:.0f} s"


def _software_and_data(cfg: dict[str, Any]) -> list[str]:
    env, data = cfg["environment"], cfg.get("data") or {}
    lines = [
        f"Python {env.get('python')}, numpy {env.get('numpy')}, torch {env.get('torch')}, "
        f"mnistlab {env.get('mnistlab')}; {env.get('platform')}"
    ]
    if env.get("conv_pool"):
        lines.append(
            f"The STN's conv → pool → ReLU blocks on the CPU: {env['conv_pool']} (the native "
            "kernel and torch's layers agree to rounding, not to the bit)"
        )
    if data:
        lines.append(f"MNIST source: {data['source']} ({data['location']})")
        lines += [f"MNIST {n}: SHA-256 {d} (verified at load)" for n, d in data["sha256"].items()]
    return lines
