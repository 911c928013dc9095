"""Tools around normalization layers: summaries (and, later, folding, precise statistics, conversion, the doctor)."""

from .summary import Summary, count_parameters, summary

__all__ = ["Summary", "count_parameters", "summary"]
