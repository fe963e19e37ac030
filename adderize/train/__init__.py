"""The AdderNet training scheme: adaptive learning-rate scaling and the l_p -> l_1 schedule."""

from adderize.train.adaptive_lr import AdaptiveLRScaling, adder_weights
from adderize.train.calibrate import recalibrate_bn
from adderize.train.schedule import LpSchedule

__all__ = ["AdaptiveLRScaling", "LpSchedule", "adder_weights", "recalibrate_bn"]
