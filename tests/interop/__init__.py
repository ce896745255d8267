"""fz-trio as real processes against real wireguard-go peers (and itself) in network namespaces."""
