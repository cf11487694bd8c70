"""Loopback addresses for the runner's nodes and pods (pure).

Linux routes all of 127.0.0.0/8 to the loopback interface, so any address in it can be bound
without configuring anything, and nothing outside the machine can reach it. Giving every pod
its own address lets every pod listen on port 8000, as pods in a cluster do.

The runner's block (default 127.64.0.0/10, clear of 127.0.0.1 where the control plane
listens) is cut into /24 subnets, one per node, like a node's podCIDR: the node itself takes
`.1` (its InternalIP, where its dcgm-exporter listens) and its pods `.2` to `.254`. A pod's
address then tells its node. Nothing is stored: the runner recovers which subnets and
addresses are taken from the Node and Pod objects it reads.
"""

from __future__ import annotations

from collections.abc import Collection
from ipaddress import IPv4Address, IPv4Network

from slmpack.devcluster.errors import DevClusterError

DEFAULT_POOL = IPv4Network("127.64.0.0/10")
SUBNET_PREFIX = 24


class AddressError(DevClusterError):
    """No loopback address is left; the runner's operator can widen --address-pool."""


def parse_pool(text: str) -> IPv4Network:
    """An address pool given on the command line: a loopback network of /24 or wider."""
    try:
        pool = IPv4Network(text)
    except ValueError as exc:
        raise AddressError(f"--address-pool {text!r} is not an IPv4 network: {exc}") from exc
    if not pool.is_loopback or pool.prefixlen > SUBNET_PREFIX:
        raise AddressError(
            f"--address-pool {text} must lie in 127.0.0.0/8 and be /{SUBNET_PREFIX} or wider, "
            f"e.g. {DEFAULT_POOL}"
        )
    if IPv4Address("127.0.0.1") in pool:
        raise AddressError(
            f"--address-pool {text} holds 127.0.0.1, where the control plane listens; "
            f"use e.g. {DEFAULT_POOL}"
        )
    return pool


def subnet_count(pool: IPv4Network) -> int:
    return int(2 ** (SUBNET_PREFIX - pool.prefixlen))


def node_subnet(pool: IPv4Network, index: int) -> IPv4Network:
    """The `index`-th /24 of the pool."""
    if not 0 <= index < subnet_count(pool):
        raise AddressError(f"Subnet {index} is outside {pool} ({subnet_count(pool)} subnets)")
    base = int(pool.network_address) + index * 256
    return IPv4Network((base, SUBNET_PREFIX))


def node_address(subnet: IPv4Network) -> IPv4Address:
    """The node's own address: the first host of its subnet."""
    return subnet.network_address + 1


def subnet_index(pool: IPv4Network, address: str) -> int | None:
    """Which subnet of the pool holds `address`; None when it is not in the pool."""
    try:
        parsed = IPv4Address(address)
    except ValueError:
        return None
    if parsed not in pool:
        return None
    return (int(parsed) - int(pool.network_address)) // 256


def free_subnet_index(pool: IPv4Network, used: Collection[int]) -> int:
    """The lowest subnet index not in `used`."""
    for index in range(subnet_count(pool)):
        if index not in used:
            return index
    raise AddressError(
        f"All {subnet_count(pool)} node subnets of {pool} are taken; pass a wider --address-pool"
    )


def free_pod_address(subnet: IPv4Network, used: Collection[str]) -> IPv4Address:
    """The lowest pod address of the subnet (`.2` to `.254`) not in `used`."""
    for offset in range(2, 255):
        candidate = subnet.network_address + offset
        if str(candidate) not in used:
            return candidate
    raise AddressError(
        f"All 253 pod addresses of {subnet} are taken: the node runs too many pods "
        "(lower its maxPods)"
    )
