"""The two networks of Deep-Blur (torch.nn modules, no I/O)."""

from .deblurring import DeblurringConfig, DeblurringNetwork
from .identification import IdentificationConfig, IdentificationNetwork, count_parameters

__all__ = [
    "DeblurringConfig",
    "DeblurringNetwork",
    "IdentificationConfig",
    "IdentificationNetwork",
    "count_parameters",
]
