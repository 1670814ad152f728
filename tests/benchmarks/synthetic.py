"""Synthetic hosts for benchmarks: a server of N PCI functions behind ACS root ports, one group per port."""

from __future__ import annotations

from isogroup.core.address import PciAddress
from isogroup.core.model import Header, HostTopology, IommuGroup, PciFunction

FUNCTIONS_PER_PORT = 4  # a 4-function endpoint behind each root port: port + functions = one group


def server(functions: int) -> HostTopology:
    funcs: list[PciFunction] = []
    groups: list[IommuGroup] = []
    ports = functions // (FUNCTIONS_PER_PORT + 1)
    for n in range(ports):
        domain, rest = divmod(n, 240)  # 240 ports per PCI domain keeps bus numbers below 0xff
        port = PciAddress(domain, 0, 1 + rest // 8, rest % 8)
        funcs.append(PciFunction(port, 0x8086, 0x2030, 0x060400, Header.BRIDGE, "pcieport", iommu_group=n))
        members = [port]
        for fn in range(FUNCTIONS_PER_PORT):
            addr = PciAddress(domain, 1 + rest, 0, fn)
            funcs.append(
                PciFunction(
                    addr,
                    0x15B3,
                    0x1017,
                    0x020000,
                    Header.ENDPOINT,
                    "mlx5_core",
                    iommu_group=n,
                    parent=port,
                    multifunction=True,
                )
            )
            members.append(addr)
        groups.append(IommuGroup(n, tuple(members)))
    # Root-complex integrated endpoints, each its own group, make up the exact count.
    for i in range(functions - len(funcs)):
        addr = PciAddress(0xFFFF, 0, i // 8, i % 8)
        funcs.append(PciFunction(addr, 0x8086, 0x0B00, 0x088000, Header.ENDPOINT, "ioatdma", iommu_group=ports + i))
        groups.append(IommuGroup(ports + i, (addr,)))
    return HostTopology.build(True, funcs, groups)


def domain_xml(host: HostTopology, hostdevs: int) -> str:
    endpoints = [f for f in host.functions if f.address.function == 0 and not f.is_bridge]
    step = max(1, len(endpoints) // hostdevs)
    chosen = endpoints[::step][:hostdevs]
    devs = "".join(
        f"<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='{f.address.domain:#06x}' "
        f"bus='{f.address.bus:#04x}' slot='{f.address.slot:#04x}' function='{f.address.function:#x}'/></source>"
        "</hostdev>\n"
        for f in chosen
    )
    return f"<domain type='kvm'><name>bench</name><devices>\n{devs}</devices></domain>\n"
