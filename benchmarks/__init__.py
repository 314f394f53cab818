"""camkit performance benchmarks: run ``python benchmarks/perf.py`` (see ``benchmarks/README.md``).

This is a package only so that the tests can import the reference implementations the
benchmarks compare against (:mod:`benchmarks.reference`); it is not part of the library.
"""
