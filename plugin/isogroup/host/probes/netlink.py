"""The one netlink request the probes make: every interface address (RTM_GETADDR dump), on the live host only.

Parsing is separate from the socket so that it can be tested on bytes. Layouts: include/uapi/linux/netlink.h
(nlmsghdr), rtnetlink.h (rtattr, RTM_*), if_addr.h (ifaddrmsg, IFA_*).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
IFA_ADDRESS = 1
IFA_LOCAL = 2
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_SITE = 200
RT_SCOPE_HOST = 254

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type
_RECV_SIZE = 65536
_TIMEOUT_S = 2.0


class NetlinkError(OSError):
    pass


@dataclass(frozen=True)
class IfAddress:
    index: int
    family: int  # socket.AF_INET or AF_INET6
    address: str
    prefixlen: int
    scope: int

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attributes(data: bytes, at: int, end: int) -> Iterator[tuple[int, bytes]]:
    while at + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, at)
        if length < _RTATTR.size or at + length > end:
            return
        yield kind, data[at + _RTATTR.size : at + length]
        at += _align(length)


def parse_addr_dump(data: bytes, seq: int) -> tuple[list[IfAddress], bool]:
    """The addresses in one recv() of an RTM_GETADDR dump answering `seq`, and whether the dump ended.
    Raises NetlinkError for an error reply or an interrupted dump (the caller asks again)."""
    found: list[IfAddress] = []
    at = 0
    while at + _NLMSGHDR.size <= len(data):
        length, kind, flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, at)
        if length < _NLMSGHDR.size or at + length > len(data):
            raise NetlinkError("truncated netlink message")
        body = at + _NLMSGHDR.size
        if msg_seq == seq:
            if flags & NLM_F_DUMP_INTR:
                raise NetlinkError("the address dump was interrupted by a change")
            if kind == NLMSG_DONE:
                return found, True
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, body)
                if err:
                    raise NetlinkError(-err, os.strerror(-err))
            elif kind == RTM_NEWADDR and body + _IFADDRMSG.size <= at + length:
                family, prefixlen, _flags, scope, index = _IFADDRMSG.unpack_from(data, body)
                attrs = dict(_attributes(data, body + _IFADDRMSG.size, at + length))
                raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))  # IFA_ADDRESS is the peer on point-to-point
                if raw is not None and family in (socket.AF_INET, socket.AF_INET6):
                    text = str(ipaddress.ip_address(raw))
                    found.append(IfAddress(index, family, text, prefixlen, scope))
        at += _align(length)
    return found, False


def dump_addresses(attempts: int = 3) -> list[IfAddress]:
    """Every address of every interface in this network namespace. Raises OSError when netlink cannot answer."""
    for attempt in range(attempts):
        try:
            return _dump_once(seq=attempt + 1)
        except NetlinkError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _dump_once(seq: int) -> list[IfAddress]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.settimeout(_TIMEOUT_S)
        sock.bind((0, 0))
        request = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        sock.sendto(header + request, (0, 0))
        found: list[IfAddress] = []
        while True:
            data = sock.recv(_RECV_SIZE)
            if not data:
                raise NetlinkError("netlink closed the dump early")
            part, done = parse_addr_dump(data, seq)
            found += part
            if done:
                return found
