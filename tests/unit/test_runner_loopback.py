"""Loopback subnets for runner nodes and addresses for their pods (pure)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from slmpack.devcluster import loopback
from slmpack.devcluster.loopback import AddressError


def test_the_default_pool_avoids_the_control_planes_address() -> None:
    pool = loopback.DEFAULT_POOL

    assert pool.is_loopback
    assert IPv4Address("127.0.0.1") not in pool
    assert loopback.subnet_count(pool) == 16384


def test_nodes_get_a_24_each_and_take_its_first_address() -> None:
    pool = loopback.DEFAULT_POOL

    assert loopback.node_subnet(pool, 0) == IPv4Network("127.64.0.0/24")
    assert str(loopback.node_subnet(pool, 257)) == "127.65.1.0/24"
    subnet = loopback.node_subnet(pool, 3)
    assert str(subnet) == "127.64.3.0/24"
    assert str(loopback.node_address(subnet)) == "127.64.3.1"
    assert loopback.subnet_index(pool, "127.64.3.17") == 3
    assert loopback.subnet_index(pool, "127.0.0.1") is None
    assert loopback.subnet_index(pool, "not an address") is None


def test_free_subnets_and_pod_addresses_fill_the_lowest_gap() -> None:
    pool = loopback.DEFAULT_POOL
    subnet = loopback.node_subnet(pool, 0)

    assert loopback.free_subnet_index(pool, {0, 1, 3}) == 2
    assert str(loopback.free_pod_address(subnet, set())) == "127.64.0.2"
    assert str(loopback.free_pod_address(subnet, {"127.64.0.2", "127.64.0.4"})) == "127.64.0.3"


def test_a_full_subnet_or_pool_says_what_to_change() -> None:
    subnet = IPv4Network("127.8.0.0/24")
    taken = {str(subnet.network_address + i) for i in range(2, 255)}

    with pytest.raises(AddressError, match="maxPods"):
        loopback.free_pod_address(subnet, taken)
    small = loopback.parse_pool("127.8.0.0/23")
    with pytest.raises(AddressError, match="wider --address-pool"):
        loopback.free_subnet_index(small, {0, 1})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("10.0.0.0/16", "127.0.0.0/8"),
        ("127.0.0.0/16", "127.0.0.1"),
        ("127.9.0.0/25", "/24 or wider"),
        ("banana", "not an IPv4 network"),
    ],
)
def test_bad_pools_are_refused(text: str, problem: str) -> None:
    with pytest.raises(AddressError, match=problem):
        loopback.parse_pool(text)
