"""adderize: turn PyTorch/timm CNNs into multiplication-free networks.

import timm, adderize
ann, report = adderize.adderize(timm.create_model("resnet50"), return_report=True)
"""

from adderize._api import adderize
from adderize._errors import AdderizeError, AdderizeTypeError
from adderize._log import log_to_stdout
from adderize._version import __version__
from adderize.io import create_float_model, create_model, load, save
from adderize.passes import (
    LayerRecord,
    OpConfig,
    OpMapping,
    OpSpec,
    RewriteReport,
    register_op,
)

__all__ = [
    "AdderizeError",
    "AdderizeTypeError",
    "LayerRecord",
    "OpConfig",
    "OpMapping",
    "OpSpec",
    "RewriteReport",
    "__version__",
    "adderize",
    "create_float_model",
    "create_model",
    "load",
    "log_to_stdout",
    "register_op",
    "save",
]
