"""The separate presence classifier's probability (``--run``): scored by the commands, which run it."""

from cloudpipe.algorithms.presence import CLASSIFIER
from cloudpipe.pipeline.sources import Source, register

register(Source(CLASSIFIER, "the presence classifier's probability"))
