"""Tools around normalization layers: summary, folding for inference, precise statistics, conversion, the doctor,
parameter groups for optimizers."""

from .convert import convert, counterparts
from .doctor import Finding, doctor
from .freeze import freeze_batchnorm
from .fold import ChannelAffine, FoldResult, fold_batchnorm
from .optim import param_groups
from .precise import adapt_batchnorm, precise_batchnorm
from .summary import Summary, count_parameters, summary

__all__ = [
    "ChannelAffine",
    "Finding",
    "FoldResult",
    "Summary",
    "adapt_batchnorm",
    "convert",
    "count_parameters",
    "counterparts",
    "doctor",
    "fold_batchnorm",
    "freeze_batchnorm",
    "param_groups",
    "precise_batchnorm",
    "summary",
]
