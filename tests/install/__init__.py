"""Installing fz-trio: what pip gives when the native kernels cannot be built."""
