"""Energy-constrained per-layer operator search (conv / adder / binary / shift) with NNI.

``OpSpace.from_model`` derives the space from any float model through the conversion pass
and prices every sample from the energy cost table; ``search`` runs an NNI experiment
(``engine="nni"``) or an in-process loop (``engine="sequential"``). NNI is imported only
when an experiment runs (optional extra ``adderize[nas]``).
"""

from adderize.search.results import pareto_front
from adderize.search.run import search
from adderize.search.settings import STRATEGIES, SearchSettings
from adderize.search.space import DEFAULT_OPS, OpSpace

__all__ = ["DEFAULT_OPS", "STRATEGIES", "OpSpace", "SearchSettings", "pareto_front", "search"]
