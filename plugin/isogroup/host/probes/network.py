"""Network interfaces under a PCI function, and the interfaces stacked on them (bridge, bond, VLAN, macvlan:
`upper_*` links): up with an IP address, carrying routes (the default route above all), enslaved to a bond,
bridge, team or VRF (`master`).

Addresses come from netlink (RTM_GETADDR) on the live host. On a tree: IPv6 from /proc/net/if_inet6, IPv4 from
the local entries of /proc/net/fib_trie, each given to the one interface whose connected route covers it; an
address no route places is reported as could-not-tell. Routes come from /proc/net/route (IPv4, main table) and
/proc/net/ipv6_route. Link-local and host-scope addresses and routes do not count: every up interface has them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from isogroup.core.model import UseCode
from isogroup.host.probes import netlink
from isogroup.host.probes.base import (
    Collector,
    ProbeContext,
    Target,
    Unreadable,
    listdir,
    listing,
    printable,
    read_attr,
)

FAMILY = "network"

IFF_UP = 0x1
RTF_UP = 0x1
RTF_REJECT = 0x200
RTF_ANYCAST = 0x100000
RTF_CACHE = 0x01000000
RTF_LOCAL = 0x80000000
# /proc/net/if_inet6 scope column (IPV6_ADDR_SCOPE_MASK bits): 0x10 host (::1), 0x20 link (fe80::/10).
_INET6_LOCAL_SCOPES = (0x10, 0x20)
_LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")
_MULTICAST6 = ipaddress.IPv6Network("ff00::/8")
_LOOPBACK4 = ipaddress.IPv4Network("127.0.0.0/8")
_FIB_LEAF = re.compile(r"^\s*\|-- (\S+)$")
_FIB_ENTRY = re.compile(r"^\s*/(\d+) (\S+) (\S+)")


@dataclass(frozen=True)
class Route:
    iface: str
    destination: str  # "10.0.0.0/24", "::/0"
    default: bool


@dataclass
class Addresses:
    by_iface: dict[str, list[str]] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)  # tree only: local IPv4 addresses no route places


# --- /proc/net ---------------------------------------------------------------------------------------------


def _ipv4(hex_text: str) -> ipaddress.IPv4Address:
    """/proc/net/route prints a __be32 as a host-order %08X."""
    return ipaddress.IPv4Address(struct.pack("=I", int(hex_text, 16)))


def parse_route(text: str) -> list[Route]:
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            flags = int(fields[3], 16)
            dest, mask = _ipv4(fields[1]), _ipv4(fields[7])
            network = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except ValueError:
            continue
        if flags & RTF_UP and not flags & RTF_REJECT:
            routes.append(Route(fields[0], str(network), network.prefixlen == 0))
    return routes


def parse_ipv6_route(text: str) -> list[Route]:
    routes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            dest = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            plen = int(fields[1], 16)
            flags = int(fields[8], 16)
            network = ipaddress.IPv6Network(f"{dest}/{plen}", strict=False)
        except ValueError:
            continue
        if not flags & RTF_UP or flags & (RTF_REJECT | RTF_LOCAL | RTF_ANYCAST | RTF_CACHE):
            continue
        if network.subnet_of(_LINK_LOCAL6) or network.subnet_of(_MULTICAST6):
            continue
        routes.append(Route(fields[9], str(network), plen == 0))
    return routes


def parse_if_inet6(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        try:
            address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            plen, scope = int(fields[2], 16), int(fields[3], 16)
        except ValueError:
            continue
        if scope & 0xF0 not in _INET6_LOCAL_SCOPES:
            found.setdefault(fields[5], []).append(f"{address}/{plen}")
    return found


def parse_fib_trie_local(text: str) -> list[ipaddress.IPv4Address]:
    """The host's own IPv4 addresses: /32 `host LOCAL` leaves of the trie (fib_trie_seq_show)."""
    found: list[ipaddress.IPv4Address] = []
    leaf: str | None = None
    for line in text.splitlines():
        if m := _FIB_LEAF.match(line):
            leaf = m[1]
        elif (m := _FIB_ENTRY.match(line)) and leaf is not None and m[1] == "32" and m[3] == "LOCAL":
            try:
                address = ipaddress.IPv4Address(leaf)
            except ValueError:
                continue
            if address not in found:
                found.append(address)
    return found


def routes(ctx: ProbeContext) -> list[Route]:
    return parse_route(ctx.read_proc("net/route")) + parse_ipv6_route(ctx.read_proc("net/ipv6_route", absent=""))


def addresses(ctx: ProbeContext) -> Addresses:
    key = "network:addresses"
    cached = ctx.memo(key)
    if isinstance(cached, Addresses):
        return cached
    if isinstance(cached, Unreadable):
        raise cached
    try:
        value = _live_addresses(ctx) if ctx.seams.live else _tree_addresses(ctx)
    except Unreadable as exc:
        ctx.remember(key, exc)
        raise
    ctx.remember(key, value)
    return value


def _live_addresses(ctx: ProbeContext) -> Addresses:
    try:
        dump = netlink.dump_addresses()
    except OSError as exc:
        raise Unreadable("the interface addresses from netlink (RTM_GETADDR)", exc.errno) from None
    names = {read_attr(os.path.join(path, "ifindex")): name for name, path in ctx.class_members("net")}
    found = Addresses()
    for addr in dump:
        name = names.get(str(addr.index))
        # Link and host scope (253, 254 in include/uapi/linux/rtnetlink.h) do not count, as on a tree.
        if name is not None and addr.scope in (netlink.RT_SCOPE_UNIVERSE, netlink.RT_SCOPE_SITE):
            found.by_iface.setdefault(name, []).append(str(addr))
    return found


def _tree_addresses(ctx: ProbeContext) -> Addresses:
    found = Addresses(by_iface=parse_if_inet6(ctx.read_proc("net/if_inet6")))
    connected = [
        (r.iface, ipaddress.IPv4Network(r.destination))
        for r in parse_route(ctx.read_proc("net/route"))
        if not r.default
    ]
    for address in parse_fib_trie_local(ctx.read_proc("net/fib_trie")):
        if address in _LOOPBACK4:
            continue
        owners = {iface: net for iface, net in connected if address in net}
        if len(owners) == 1:
            ((iface, net),) = owners.items()
            found.by_iface.setdefault(iface, []).append(f"{address}/{net.prefixlen}")
        else:
            found.unplaced.append(str(address))
    return found


# --- the probe -------------------------------------------------------------------------------------------------


def _uppers(ctx: ProbeContext, name: str) -> list[str]:
    base = ctx.sys(f"class/net/{name}")
    return [entry[len("upper_") :] for entry in listdir(base) if entry.startswith("upper_")]


def _stacked(ctx: ProbeContext, own: str) -> list[str]:
    """`own` and every interface stacked on it, nearest first."""
    order, todo = [own], [own]
    while todo:
        for upper in _uppers(ctx, todo.pop(0)):
            if upper not in order:
                order.append(upper)
                todo.append(upper)
    return order


def _is_up(ctx: ProbeContext, name: str) -> bool:
    flags = read_attr(ctx.sys(f"class/net/{name}/flags"))
    try:
        return flags is None or bool(int(flags, 16) & IFF_UP)
    except ValueError:
        return True  # unreadable flags: do not assume it is down


def _master_kind(ctx: ProbeContext, master: str) -> str:
    base = ctx.sys(f"class/net/{master}")
    for line in (read_attr(os.path.join(base, "uevent")) or "").splitlines():
        if line.startswith("DEVTYPE="):
            return printable(line.split("=", 1)[1])
    if os.path.isdir(os.path.join(base, "bridge")):
        return "bridge"
    if os.path.isdir(os.path.join(base, "bonding")):
        return "bond"
    return "device"


def probe(ctx: ProbeContext, targets: Iterable[Target], out: Collector) -> None:
    for target in targets:
        own = [name for name, _ in ctx.below(target, "net")]
        for name in own:
            _probe_interface(ctx, target, name, out)
        if not own and _hidden_interfaces(target):
            whether = "its network interface is in use"
            why = "its interface is in another network namespace, which this one cannot inspect"
            out.could_not_tell(target, FAMILY, "net", whether, why)


def _hidden_interfaces(target: Target) -> bool:
    """A netdev moved to another namespace stays below its device, but sysfs shows it only in that namespace:
    the device's `net/` directory is there and looks empty."""
    for directory in [os.path.join(target.path, "net")] + [
        os.path.join(target.path, d, "net") for d in listdir(target.path) if d.startswith("virtio")
    ]:
        if os.path.isdir(directory) and not listdir(directory):
            return True
    return False


def _probe_interface(ctx: ProbeContext, target: Target, own: str, out: Collector) -> None:
    stacked = _stacked(ctx, own)

    def label(name: str) -> str:
        return printable(name) if name == own else f"{printable(name)} (on top of {printable(own)})"

    for name in stacked:
        link = ctx.sys(f"class/net/{name}/master")
        if os.path.lexists(link):
            master_name = os.path.basename(ctx.follow(link))
            text = f"has {label(name)} enslaved to {_master_kind(ctx, master_name)} {printable(master_name)}"
            out.use(target, UseCode.NETWORK_MEMBER, name, text)

    up = [name for name in stacked if _is_up(ctx, name)]
    if up:
        try:
            found = addresses(ctx)
        except Unreadable as exc:
            for name in up:
                out.could_not_tell(target, FAMILY, name, f"{label(name)} has IP addresses", exc.why)
        else:
            for name in up:
                mine = found.by_iface.get(name, [])
                if mine:
                    out.use(target, UseCode.NETWORK_ADDRESS, name, f"has {label(name)} up with {listing(mine)}")
                elif found.unplaced:
                    why = (
                        f"local IPv4 address(es) {listing(found.unplaced)} are on no route this tree shows; "
                        "only netlink on the live host can place them"
                    )
                    out.could_not_tell(target, FAMILY, name, f"{label(name)} has IPv4 addresses", why)

    try:
        table = routes(ctx)
    except Unreadable as exc:
        for name in stacked:
            out.could_not_tell(target, FAMILY, f"{name} routes", f"{label(name)} carries routes", exc.why)
        return
    for name in stacked:
        via = [r for r in table if r.iface == name]
        if via:
            out.use(target, UseCode.NETWORK_ROUTE, name, _route_text(via, label(name)))


def _route_text(via: list[Route], label: str) -> str:
    defaults = [r for r in via if r.default]
    others = list(dict.fromkeys(r.destination for r in via if not r.default))
    if not defaults:
        return f"carries routes to {listing(others)} via {label}"
    both = len({":" in r.destination for r in defaults}) == 2
    which = "the IPv4 and IPv6 default routes" if both else "the default route"
    if not others:
        return f"carries {which} via {label}"
    more = "1 more route" if len(others) == 1 else f"{len(others)} more routes"
    return f"carries {which} and {more} ({listing(others)}) via {label}"
