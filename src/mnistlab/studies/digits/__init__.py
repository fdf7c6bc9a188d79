"""Digits 0–4 → 5–9: the study as specified (:mod:`.study`, parts in :mod:`.source`,
:mod:`.tune` and :mod:`.transfer`) and its best honest protocol (:mod:`.best`).

Config and context live in :mod:`.common`, which imports no other module of the package, so
nothing imports back.
"""

from mnistlab.studies.digits.common import STUDY, VARIANTS, CellContext, DigitsConfig
from mnistlab.studies.digits.study import PARTS, run

__all__ = ["PARTS", "STUDY", "VARIANTS", "CellContext", "DigitsConfig", "run"]
