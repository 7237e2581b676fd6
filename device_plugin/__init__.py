"""smarter-device-manager.

kubelet device plugin: /dev devices and remote cores as extended resources.
"""
