"""What the tutorial-STN sections share: the verdict of the pre-registered primary score,
the θ ablations' tests and words, and the per-seed table.

Every verdict rests on the primary score (per seed and kind, the mean test accuracy over the
last scored epochs; README, "How the STN verdicts are decided") and its paired t-test over
seeds; the last epoch's accuracy and each seed's McNemar test on its final models are kept as
descriptions, in tables. Explanations come only from measurements: the θ ablations (the
image's own θ against the identity, the kind's mean θ and a shuffled θ)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mnistlab.report.sections.common import (
    Table,
    count,
    pct,
    pm,
)
from mnistlab.report.verdict import compare, signed
from mnistlab.stats import Comparison, compare_correct, mean_ci, paired

MODELS = ("stn", "baseline")
NAMES = {"stn": "STN", "baseline": "CNN"}


def verdict(m: dict[str, Any], kind: str) -> Comparison:
    """STN − CNN on ``kind``: the paired t-test over seeds of the primary score."""
    a = m["models"]
    return paired(a["stn"]["per_seed_primary"][kind], a["baseline"]["per_seed_primary"][kind])


def score_rule(m: dict[str, Any], cfg: dict[str, Any]) -> str:
    n, seeds = m["score_epochs"], cfg["seeds"]
    return (
        f"Score: per seed, the mean test accuracy over the last {count(n, 'epoch')} "
        f'(fixed before the runs: README, "How the STN verdicts are decided"); verdicts: '
        f"paired t-test over {count(seeds, 'seed')} (seed s gives both models the same batch "
        f"order). {cfg['optimizer'].upper()}, lr {cfg['lr']:g}, batch {cfg['batch_size']}, "
        f"{count(cfg['epochs'], 'epoch')}, {m['n_test']:,} test images."
    )


# ------------------------------------------------------------------ θ ablations


def ablation_tests(m: dict[str, Any], kind: str) -> dict[str, Comparison]:
    """Per kind: the STN with its own θ against each ablation, and the kind's mean θ against
    the CNN (does a gain survive one global warp per kind?)."""
    ab = m["ablation"]["per_seed"]
    own = ab["stn"][kind]
    out = {v: paired(own, ab[v][kind]) for v in ("identity", "kind_mean", "shuffled")}
    out["global_vs_cnn"] = paired(
        ab["kind_mean"][kind], m["models"]["baseline"]["per_seed_primary"][kind]
    )
    return out


def adaptivity_line(kind: str, t: dict[str, Comparison]) -> str:
    """What the ablations say about ``kind``: does the warp matter, is it per image? (One
    sentence per test, so that no direction word shares a sentence with another's p-value.)"""
    label = "all test images" if kind == "all" else f"{kind} test images"
    own, glob = t["kind_mean"], t["global_vs_cnn"]
    if own.significant and own.diff > 0:
        why = "So the transformer adapts to each image: one warp per kind does not do as well."
    elif own.status == "not significant":
        why = "So no per-image adaptation is shown: one global warp per kind does as well here."
    else:
        why = "So per-image adaptation is not shown."
    line = (
        f"On {label}, the STN's own θ against no warp (θ = identity): "
        f"{compare(t['identity'], 'its own θ', 'no warp')}. Against its kind's mean θ: "
        f"{compare(own, 'its own θ', 'the mean θ')}. Against another image's θ of the same "
        f"kind: {compare(t['shuffled'], 'its own θ', 'a shuffled θ')}. {why}"
    )
    if glob.significant:
        side = "still beats" if glob.diff > 0 else "falls behind"
        line += f" With the kind's mean θ alone the STN {side} the CNN ({signed(glob)})."
    return line


def ablation_table(m: dict[str, Any]) -> Table:
    ab = m["ablation"]["per_seed"]
    cnn = m["models"]["baseline"]["per_seed_primary"]
    rows = []
    for kind in m["kinds"]:
        cells = [pm(mean_ci(ab[v][kind])) for v in ("stn", "identity", "kind_mean", "shuffled")]
        rows.append([kind, *cells, pm(mean_ci(cnn[kind]))])
    epochs = m["ablation"]["epochs"]
    return Table(
        ["kind", "own θ", "identity (no warp)", "kind's mean θ", "shuffled θ", "CNN"],
        rows,
        f"θ ablations: test accuracy of the trained STNs with θ replaced, averaged over epochs "
        f"{epochs[0]}–{epochs[-1]} (the scored epochs), mean ± 95 % CI over seeds",
    )


# ------------------------------------------------------------------ per seed


def _mcnemar(m: dict[str, Any], kind: str, k: int) -> Comparison:
    tc = [m["models"][x]["test_correct_by_seed"][k] for x in MODELS]
    if kind == "all":
        return compare_correct(*tc, m["n_test"])
    counts = m["test_kind_counts"]
    j = m["kinds"].index(kind) - 1  # kinds: all, then the test set's order
    lo = sum(counts[:j])
    mask = np.zeros(sum(counts), dtype=bool)
    mask[lo : lo + counts[j]] = True
    return compare_correct(*tc, sum(counts), mask)


def seed_table(m: dict[str, Any]) -> Table:
    """Every seed and kind: both scores of both models and the final models' McNemar."""
    a = m["models"]
    rows = []
    for k, seed in enumerate(a["stn"]["seeds"]):
        for kind in m["kinds"]:
            p = [a[x]["per_seed_primary"][kind][k] for x in MODELS]
            f = [a[x]["per_seed_final"][kind][k] for x in MODELS]
            rows.append(
                [
                    str(seed),
                    kind,
                    pct(p[0]),
                    pct(p[1]),
                    f"{100 * (p[0] - p[1]):+.2f}",
                    pct(f[0]),
                    pct(f[1]),
                    signed(_mcnemar(m, kind, k)),
                ]
            )
    n = m["score_epochs"]
    return Table(
        [
            "seed",
            "kind",
            f"STN (last {n})",
            f"CNN (last {n})",
            "STN − CNN (points)",
            "STN (last epoch)",
            "CNN (last epoch)",
            "last epoch, McNemar on this seed's models",
        ],
        rows,
        f"Per seed: the primary score (mean of the last {n} epochs) and, as a description only, "
        "the last epoch and McNemar's test of that epoch's two models on the same images",
    )


# ------------------------------------------------------------------ study 1: MNIST
