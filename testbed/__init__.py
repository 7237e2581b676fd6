"""The test bed: a simulated gateway with all three programs (containerd over CRI, a kubelet
stand-in, the remote-core simulator, network namespaces), used by the demo, the tests and the
benchmarks. Not installed: it runs from the repository root.
"""
