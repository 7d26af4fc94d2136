"""The suites of ``python -m benchmarks``: each module says what it ``MEASURES``, which suites'
outputs it ``NEEDS``, its ``options(parser)`` and ``run(args)`` (see :mod:`benchmarks.common`)."""
