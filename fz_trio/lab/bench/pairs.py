"""Which tunnel pairs run, and with which extra `fz-trio up` arguments (variants)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import attrs

from fz_trio.lab.scenario import Implementation

__all__ = [
    "BASELINE",
    "DEFAULT_VARIANT",
    "FZ",
    "PAIRS",
    "WGGO",
    "Job",
    "Variant",
    "parse_variants",
    "plan",
]

FZ: Implementation = "fz-trio"
WGGO: Implementation = "wireguard-go"

# name -> (client implementation, server implementation); None = no tunnel, raw veth.
PAIRS: dict[str, tuple[Implementation, Implementation] | None] = {
    "veth": None,
    "wggo-wggo": (WGGO, WGGO),
    "fz-wggo": (FZ, WGGO),
    "wggo-fz": (WGGO, FZ),
    "fz-fz": (FZ, FZ),
}
BASELINE = "wggo-wggo"  # every ratio is against it
DEFAULT_VARIANT = "default"


@attrs.frozen
class Variant:
    label: str
    fz_args: tuple[str, ...]


@attrs.frozen
class Job:
    """One pair on its own fresh test network, with one variant of the fz-trio arguments."""

    pair: str
    variant: Variant


def parse_variants(text: str | None, base: Variant) -> list[Variant]:
    """"default;--tun-queues 1" -> [base, base + --tun-queues 1]; labels are the args as given."""
    if not text:
        return [base]
    out: list[Variant] = []
    for item in text.split(";"):
        item = item.strip()
        if item in ("", DEFAULT_VARIANT):
            out.append(base)
        else:
            label = item if base.label == DEFAULT_VARIANT else f"{base.label} {item}"
            out.append(Variant(label, base.fz_args + tuple(shlex.split(item))))
    return out


def plan(pairs: Sequence[str], base: Variant, variants: Sequence[Variant]) -> list[Job]:
    """Pairs in the order given; fz-fz once per variant, other fz pairs with the base args."""
    jobs: list[Job] = []
    for pair in pairs:
        impls = PAIRS[pair]
        if pair == "fz-fz":
            jobs += [Job(pair, v) for v in variants]
        elif impls is not None and FZ in impls:
            jobs.append(Job(pair, base))
        else:  # nothing runs fz-trio: its arguments mean nothing here
            jobs.append(Job(pair, Variant(DEFAULT_VARIANT, ())))
    return jobs
