"""One builder per study: its result files on disk → :class:`Section` (s) of generated prose,
figures and tables. The registry names each study's builder; every builder takes
``(folder, baseline)`` — its own finished run folder (or None) and, for a best protocol, the
as-specified study's folder it is compared with.
"""

from mnistlab.report.sections.common import Section, Table, published
from mnistlab.report.sections.digits import digits
from mnistlab.report.sections.digits_best import digits_best
from mnistlab.report.sections.environment import environment
from mnistlab.report.sections.fewshot import fewshot, fewshot_best
from mnistlab.report.sections.stn import stn, stn_deform

__all__ = [
    "Section",
    "Table",
    "digits",
    "digits_best",
    "environment",
    "fewshot",
    "fewshot_best",
    "published",
    "stn",
    "stn_deform",
]
