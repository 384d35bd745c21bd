"""The ``nlattn`` command line (installed as the package ``nlattn_cli``).

Importing this package (or any module in it) must stay cheap: the commands import ``nlattn``
(and with it Numba) inside their functions, so that ``nlattn --help`` answers at once.
"""
