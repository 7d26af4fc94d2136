"""cloudpipe: a two-stage (segment, then gate by presence) pipeline for Understanding Clouds."""

__version__ = "0.1.0"
