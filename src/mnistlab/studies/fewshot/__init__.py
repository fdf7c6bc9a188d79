"""Few-shot ImageNet transfer: the study as specified (:mod:`.study`) and its best honest
protocol (:mod:`.best`), both on one backbone's frozen features and heads (:mod:`.pool`).

The config and the seeds' data draws live in :mod:`.common`, which imports nothing else of
the package.
"""

from mnistlab.studies.fewshot.common import FewshotConfig
from mnistlab.studies.fewshot.study import run

__all__ = ["FewshotConfig", "run"]
