"""The benchmarks: scripts run as files (``python benchmarks/study.py``) and modules the tests import.

Every script puts the repository root on ``sys.path`` when run as a file, so its siblings import as
``benchmarks.<module>`` either way; ``benchlib`` holds what more than one benchmark uses.
"""
