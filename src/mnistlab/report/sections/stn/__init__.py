"""Sections of the spatial-transformer studies, one module per study, with what they share in
:mod:`.common`."""

from mnistlab.report.sections.stn.best import stn_best
from mnistlab.report.sections.stn.deform import stn_deform
from mnistlab.report.sections.stn.paper import stn_paper
from mnistlab.report.sections.stn.tutorial import stn

__all__ = ["stn", "stn_best", "stn_deform", "stn_paper"]
