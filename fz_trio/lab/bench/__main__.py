from fz_trio.lab.bench.cli import run

run()
