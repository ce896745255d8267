"""The lab: development tooling that the product never imports.

The simulated network (`sim`), real test networks in namespaces (`testnet`), tunnel pairs with
real peers (`scenario`), iperf3 (`iperf`), the benchmark (`bench`) and the demo (`demo`). The
runtime (`fz-trio up`, the live REPL) loads none of it; `fz-trio demo`, `fz-trio repl --sim` and
`python -m fz_trio.lab.bench` do.
"""
