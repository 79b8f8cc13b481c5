"""lbcore's data plane: Cython. Never imports lbcore (the control plane)."""
