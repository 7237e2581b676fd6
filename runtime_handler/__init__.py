"""smarter-hybrid-runtime.

OCI runtime behind the hybrid RuntimeClass: firmware on remote cores, the rest to runc.
"""
