"""`fz-trio repl --sim`: the developer REPL on the simulated network, no root and no devices."""

from __future__ import annotations

from typing import Any

import trio

from fz_trio import __version__
from fz_trio.core import format_endpoint
from fz_trio.lab.sim import SimNetwork, SimNode
from fz_trio.repl import PingResult, describe_tunnel, run_console


def sim_namespace(seed: int = 1) -> dict[str, Any]:
    """alice, bob and carol, all peers of each other, answering pings; tracing on."""
    net = SimNetwork(seed)
    alice, bob, carol = (net.add_node(name) for name in ("alice", "bob", "carol"))
    net.connect(alice, bob)
    net.connect(alice, carol)
    net.connect(bob, carol)
    for node in net.nodes.values():
        node.answer_pings = True
    net.trace = True

    async def ping(target: SimNode | str, source: SimNode = alice, *, family: int = 4,
                   timeout: float = 10.0) -> PingResult:
        """`source` pings `target` (a node or a tunnel address) through the tunnels; the
        simulated clock runs until the reply or `timeout`."""
        address = target if isinstance(target, str) else (
            target.tunnel_v4 if family == 4 else target.tunnel_v6)
        return PingResult(address, net.ping(source, target, family=family, timeout=timeout),
                          timeout)

    def show(node: SimNode = alice) -> None:
        """Peers, sessions, timers and counters of `node`'s tunnel."""
        names = {n.public_key: n.name for n in net.nodes.values()}
        print(f"{node.name} at {format_endpoint(node.address)}, t={net.now:.3f}")
        print(describe_tunnel(node.tunnel, net.now, names))

    return {"trio": trio, "net": net, "alice": alice, "bob": bob, "carol": carol,
            "tunnel": alice.tunnel, "peers": list(alice.tunnel.peers.values()),
            "stats": alice.tunnel.counters, "ping": ping, "show": show}


SIM_BANNER = """\
fz-trio {version} REPL on a simulated network (seed {seed}); the clock is simulated.
alice, bob, carol: nodes, all peers of each other (tunnel 100.64.N.1, fd00:64:0:N::1).
net: the network. tunnel, peers, stats: alice's. Every datagram is traced (net.trace = False).
  await ping(bob)              alice pings bob; ping(carol, bob, family=6)
  net.run(130)                 let 130 simulated seconds pass (timers fire)
  show(), show(bob)            sessions, timers and counters
  net.partition(alice, bob), net.heal(), net.roam(bob), net.restart(bob, new_key=True)
Top-level await works. Ctrl-D or exit() leaves."""


def run_sim_repl(seed: int = 1) -> int:
    """`fz-trio repl --sim`."""
    banner = SIM_BANNER.format(version=__version__, seed=seed)
    return trio.run(run_console, sim_namespace(seed), banner)
