"""lbcore: an HTTPS load balancer (this package is the control plane)."""

__version__ = "0.1.0"
