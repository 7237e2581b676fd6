"""smarter-sim.

a simulated gateway: remoteproc sysfs over FUSE, cores running firmware in QEMU.
"""
