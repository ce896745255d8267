"""The development tooling: the test network and the benchmark harness."""
