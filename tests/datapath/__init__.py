"""The data path: TUN offload, GSO rules, replay window, batch kernels and twins, batched core."""
