"""Tools around normalization layers: summaries, freezing (and, later, folding, precise statistics, conversion, the doctor)."""

from .freeze import freeze_batchnorm
from .summary import Summary, count_parameters, summary

__all__ = ["Summary", "count_parameters", "freeze_batchnorm", "summary"]
