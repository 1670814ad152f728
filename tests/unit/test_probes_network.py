"""The network probe on hand-built trees (addresses, routes, the default route, bond/bridge membership, stacked
interfaces, another namespace), the /proc/net parsers, and netlink's RTM_GETADDR dump: parsed from bytes laid
out as include/uapi/linux/{netlink,rtnetlink,if_addr}.h say, and asked of this machine's kernel."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
from pathlib import Path

import pytest

from fakes.probetree import NIC, NIC2, HostTree, address, workstation
from isogroup.core.model import UseCode
from isogroup.host.probes import netlink, probe_report
from isogroup.host.probes.network import parse_fib_trie_local, parse_if_inet6, parse_ipv6_route, parse_route

LINK_LOCAL = "fe80000000000000021b21fffe3a4c5d"
GLOBAL6 = "20010db8000000000000000000000005"


@pytest.fixture
def tree(tmp_path: Path) -> HostTree:
    host = HostTree.build(tmp_path, workstation())
    host.netdev(NIC, "enp3s0f0", ifindex=2)
    host.netdev(NIC2, "enp3s0f1", ifindex=3, up=False)
    return host


def findings(tree: HostTree, *where: str) -> list[tuple[str, str, str]]:
    report = probe_report(tree.seams(), [address(w) for w in where or (NIC, NIC2)])
    return [(f.code.value, f.subject, f.message) for f in report.findings]


def test_idle_interfaces_are_not_in_use(tree: HostTree) -> None:
    """Up with only a link-local address (every up interface has one), and down: nothing."""
    tree.address6("enp3s0f0", LINK_LOCAL, 64, 0x20)
    tree.route6("enp3s0f0", "fe800000000000000000000000000000", 64)
    tree.route6("enp3s0f0", "ff000000000000000000000000000000", 8)
    assert findings(tree) == []


def test_up_with_addresses_and_the_default_route(tree: HostTree) -> None:
    tree.local4("192.168.1.23")
    tree.route("enp3s0f0", "192.168.1.0", "255.255.255.0")
    tree.route("enp3s0f0", "0.0.0.0", "0.0.0.0", gateway="192.168.1.1", flags=0x3)
    tree.address6("enp3s0f0", GLOBAL6, 64, 0x00)
    assert findings(tree) == [
        ("network-address", "enp3s0f0", "0000:03:00.0 (igb) has enp3s0f0 up with 2001:db8::5/64, 192.168.1.23/24"),
        (
            "network-route",
            "enp3s0f0",
            "0000:03:00.0 (igb) carries the default route and 1 more route (192.168.1.0/24) via enp3s0f0",
        ),
    ]


def test_default_route_alone(tree: HostTree) -> None:
    tree.route("enp3s0f0", "0.0.0.0", "0.0.0.0", gateway="10.0.0.1", flags=0x3)
    assert findings(tree) == [
        ("network-route", "enp3s0f0", "0000:03:00.0 (igb) carries the default route via enp3s0f0")
    ]


def test_ipv6_default_route_and_prefix(tree: HostTree) -> None:
    tree.route6("enp3s0f0", "0" * 32, 0, flags=0x10003)
    tree.route6("enp3s0f0", "20010db8000000000000000000000000", 64)
    tree.route("enp3s0f0", "0.0.0.0", "0.0.0.0", gateway="10.0.0.1", flags=0x3)
    assert findings(tree)[0][2] == (
        "0000:03:00.0 (igb) carries the IPv4 and IPv6 default routes and 1 more route (2001:db8::/64) via enp3s0f0"
    )


def test_a_down_interface_with_a_stale_address_is_not_in_use(tree: HostTree) -> None:
    tree.address6("enp3s0f1", GLOBAL6, 64, 0x00, ifindex=3)
    assert findings(tree, NIC2) == []


def test_bridge_port_and_the_bridge_on_top(tree: HostTree) -> None:
    tree.virtual_netdev("br0", "bridge")
    tree.enslave("enp3s0f0", "br0")
    tree.local4("10.1.0.5")
    tree.route("br0", "10.1.0.0", "255.255.0.0")
    assert findings(tree) == [
        ("network-address", "br0", "0000:03:00.0 (igb) has br0 (on top of enp3s0f0) up with 10.1.0.5/16"),
        ("network-member", "enp3s0f0", "0000:03:00.0 (igb) has enp3s0f0 enslaved to bridge br0"),
        ("network-route", "br0", "0000:03:00.0 (igb) carries routes to 10.1.0.0/16 via br0 (on top of enp3s0f0)"),
    ]


def test_bond_members_and_a_vlan_on_the_bond(tree: HostTree) -> None:
    tree.virtual_netdev("bond0", "bond")
    tree.virtual_netdev("bond0.100", "vlan")
    tree.enslave("enp3s0f0", "bond0")
    tree.enslave("enp3s0f1", "bond0")  # a down port is still a member: the bond uses it
    tree.stack("bond0", "bond0.100")
    tree.route("bond0.100", "0.0.0.0", "0.0.0.0", gateway="10.0.0.1", flags=0x3)
    assert findings(tree) == [
        ("network-member", "enp3s0f0", "0000:03:00.0 (igb) has enp3s0f0 enslaved to bond bond0"),
        (
            "network-route",
            "bond0.100",
            "0000:03:00.0 (igb) carries the default route via bond0.100 (on top of enp3s0f0)",
        ),
        ("network-member", "enp3s0f1", "0000:03:00.1 (igb) has enp3s0f1 enslaved to bond bond0"),
        (
            "network-route",
            "bond0.100",
            "0000:03:00.1 (igb) carries the default route via bond0.100 (on top of enp3s0f1)",
        ),
    ]


def test_team_and_vrf_masters_are_named_by_their_devtype(tree: HostTree) -> None:
    tree.virtual_netdev("vrf-blue", "vrf")
    tree.enslave("enp3s0f0", "vrf-blue")
    assert findings(tree, NIC) == [
        ("network-member", "enp3s0f0", "0000:03:00.0 (igb) has enp3s0f0 enslaved to vrf vrf-blue")
    ]


def test_virtio_net_interface_below_the_virtio_device(tmp_path: Path) -> None:
    host = HostTree.build(tmp_path, workstation())
    host.netdev(NIC, "eth0", under="virtio0/net")
    host.route("eth0", "0.0.0.0", "0.0.0.0", gateway="10.0.0.1", flags=0x3)
    assert [(c, s) for c, s, _ in findings(host, NIC)] == [("network-route", "eth0")]


# --- could not tell ------------------------------------------------------------------------------------------


def test_an_ipv4_address_no_route_places_is_could_not_tell(tree: HostTree) -> None:
    tree.local4("203.0.113.9")  # a /32 with noprefixroute: no connected route says whose it is
    report = probe_report(tree.seams(), [address(NIC)])
    assert report.uses == ()
    (unknown,) = report.unknown
    assert unknown.code is UseCode.NETWORK_UNKNOWN
    assert unknown.message.startswith("0000:03:00.0 (igb): could not tell whether enp3s0f0 has IPv4 addresses")
    assert "203.0.113.9" in unknown.message


def test_missing_proc_net_files_are_could_not_tell(tree: HostTree) -> None:
    (tree.proc / "net/route").unlink()
    report = probe_report(tree.seams(), [address(NIC), address(NIC2)])
    assert report.uses == ()
    assert sorted(f.subject for f in report.unknown) == ["enp3s0f0", "enp3s0f0 routes", "enp3s0f1 routes"]


def test_interface_in_another_network_namespace(tree: HostTree) -> None:
    """sysfs shows a netdev only in its own namespace; its device's net/ directory stays, empty."""
    shutil.rmtree(tree.pci(NIC2) / "net" / "enp3s0f1")
    (tree.sys / "class/net/enp3s0f1").unlink()
    report = probe_report(tree.seams(), [address(NIC2)])
    (unknown,) = report.unknown
    assert "another network namespace" in unknown.message


def test_unreadable_flags_count_as_up(tree: HostTree) -> None:
    (tree.pci(NIC2) / "net/enp3s0f1/flags").unlink()
    tree.address6("enp3s0f1", GLOBAL6, 64, 0x00, ifindex=3)
    assert [(c, s) for c, s, _ in findings(tree, NIC2)] == [("network-address", "enp3s0f1")]


# --- parsers ---------------------------------------------------------------------------------------------------


def test_parse_route_skips_garbage_and_reject_routes() -> None:
    text = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\tzzzz\t0\t1\t0\t0\t0\t0\t0\t0\t0\n"
        "eth1\t0000000A\t00000000\t0201\t0\t0\t0\t000000FF\t0\t0\t0\n"
        "short line\n"
    )
    routes = parse_route(text)
    assert [(r.iface, r.destination, r.default) for r in routes] == [("eth0", "0.0.0.0/0", True)]


def test_parse_ipv6_route_keeps_real_routes_only() -> None:
    # Captured from this project's build machine: fd00::/64, fe80::/64, the default route, ::1 (local),
    # fd00::2 (local), ff00::/8 (multicast), and the null entry (reject).
    text = """fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
fd000000000000000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001     eth0
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000003 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
"""  # noqa: E501
    assert [(r.iface, r.destination, r.default) for r in parse_ipv6_route(text)] == [
        ("eth0", "fd00::/64", False),
        ("eth0", "::/0", True),
    ]


def test_parse_if_inet6_drops_link_and_host_scope() -> None:
    text = (
        "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
        "fd000000000000000000000000000002 04 40 00 82     eth0\n"
        "00000000000000000000000000000001 01 80 10 80       lo\n"
    )
    assert parse_if_inet6(text) == {"eth0": ["fd00::2/64"]}


def test_parse_fib_trie_local_addresses() -> None:
    # Captured from this project's build machine (main and local tables merged).
    text = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
     |-- 192.0.2.2
        /32 host LOCAL
"""
    assert [str(a) for a in parse_fib_trie_local(text)] == ["127.0.0.1", "192.0.2.2"]


# --- netlink ---------------------------------------------------------------------------------------------------


def _rtattr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _message(kind: int, seq: int, body: bytes, flags: int = 0x2) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 4242) + body


def _newaddr(seq: int, family: int, index: int, prefix: int, scope: int, local: str, peer: str | None = None) -> bytes:
    ip = ipaddress.ip_address(local)
    body = struct.pack("=BBBBI", family, prefix, 0, scope, index)
    if peer is not None:
        body += _rtattr(netlink.IFA_ADDRESS, ipaddress.ip_address(peer).packed)
    body += _rtattr(netlink.IFA_LOCAL if ip.version == 4 else netlink.IFA_ADDRESS, ip.packed)
    body += _rtattr(3, b"eth0\0")  # IFA_LABEL: ignored
    return _message(netlink.RTM_NEWADDR, seq, body)


def test_parse_an_address_dump() -> None:
    data = (
        _newaddr(7, socket.AF_INET, 2, 24, 0, "192.168.1.23")
        + _newaddr(7, socket.AF_INET, 5, 32, 0, "10.0.0.1", peer="10.0.0.2")  # point-to-point: local wins
        + _newaddr(7, socket.AF_INET6, 2, 64, 253, "fe80::1")
        + _newaddr(6, socket.AF_INET, 9, 8, 0, "10.9.9.9")  # another request's answer
    )
    found, done = netlink.parse_addr_dump(data, 7)
    assert not done
    assert [(a.index, str(a), a.scope) for a in found] == [
        (2, "192.168.1.23/24", 0),
        (5, "10.0.0.1/32", 0),
        (2, "fe80::1/64", 253),
    ]
    found, done = netlink.parse_addr_dump(_message(netlink.NLMSG_DONE, 7, struct.pack("=i", 0)), 7)
    assert (found, done) == ([], True)


def test_netlink_errors_and_interrupted_dumps() -> None:
    with pytest.raises(netlink.NetlinkError):
        netlink.parse_addr_dump(_message(netlink.NLMSG_ERROR, 3, struct.pack("=i", -13) + b"\0" * 16), 3)
    with pytest.raises(netlink.NetlinkError):
        netlink.parse_addr_dump(_message(netlink.NLMSG_DONE, 3, b"\0\0\0\0", flags=0x2 | netlink.NLM_F_DUMP_INTR), 3)
    with pytest.raises(netlink.NetlinkError):
        netlink.parse_addr_dump(struct.pack("=IHHII", 999, 20, 0, 3, 0), 3)  # longer than what came


def test_netlink_on_this_kernel_lists_loopback() -> None:
    """The real kernel answers: lo (index 1) has 127.0.0.1/8 with host scope."""
    try:
        found = netlink.dump_addresses()
    except OSError as exc:  # pragma: no cover - a sandbox without netlink
        pytest.skip(f"no netlink here: {exc}")
    lo = [(str(a), a.scope) for a in found if a.index == socket.if_nametoindex("lo") and a.family == socket.AF_INET]
    assert ("127.0.0.1/8", netlink.RT_SCOPE_HOST) in lo
