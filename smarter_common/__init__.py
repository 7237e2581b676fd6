"""Shared parts of the smarter-edge programs: host paths, logs, files, locks, errors, remote cores.

Importing this package is cheap on purpose: the CNI plugin and the runtime are exec'd per pod,
so each submodule imports its own dependencies when used.
"""

__version__ = "0.1.0"
