"""The ``fashiongen`` command line: a thin layer over ``export`` (torch side) and ``runtime``."""
