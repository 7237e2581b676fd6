"""smarter-cni.

CNI plugin: pods on a node-local bridge, pod names in the node's DNS.
"""
