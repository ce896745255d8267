"""The test suite, by layer: core, datapath, shell, interop (real peers), lab, install."""
