"""Which VFIO driver a device goes to: vfio-pci, or the vendor's "variant" driver the running kernel ships for it.

A variant driver (mlx5_vfio_pci, hisi_acc_vfio_pci, pds_vfio_pci, virtio_vfio_pci, nvgrace_gpu_vfio_pci, ...) is
a PCI driver built on vfio_pci_core: it gives the guest everything vfio-pci does plus device-specific parts
(migration state, above all). Its ID table entries carry PCI_ID_F_VFIO_DRIVER_OVERRIDE
(include/linux/mod_devicetable.h; the table macro is PCI_DRIVER_OVERRIDE_DEVICE_VFIO in include/linux/pci.h), so
the kernel never probes it on its own: it binds only through `driver_override`. For the same reason
scripts/mod/file2alias.c (`do_pci_entry`) writes its aliases with the prefix `vfio_pci:` instead of `pci:`, which
no modprobe ever looks up; the generic vfio_pci module itself has one, matching everything
(`alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci`, from its table entry PCI_DRIVER_OVERRIDE_DEVICE_VFIO(PCI_ANY_ID,
PCI_ANY_ID) in drivers/vfio/pci/vfio_pci.c).

libvirt ≥ 10.0 chooses among them for every managed='yes' PCI hostdev (libvirt commit 82e2fac2971, "qemu:
automatically bind to a vfio variant driver, if available"; `virPCIDeviceFindBestVFIOVariant` in
src/util/virpci.c): it reads the device's sysfs `modalias`, scans /lib/modules/$(uname -r)/modules.alias for the
lines `alias vfio_pci:PATTERN MODULE`, and takes the module whose PATTERN matches "with the least number of
wildcard ('*') fields". `<driver model='NAME'/>` in the hostdev (libvirt commit 738b201aad4, "conf: support
manually specifying VFIO variant driver in <hostdev> XML") skips the search and binds NAME, so that a user can
force vfio-pci past a broken variant. isogroup applies the same rule to the group members it moves itself, so
that one host never mixes two policies.

Not read here, so named: libvirt's virpci.c of 10.x was not in the sources searched; the rule above is from its
commit message, and the tie rule (the first matching line in file order wins a tie, a strict `<` on the count)
from NVIDIA's port of that function (k8s-driver-manager internal/nvpassthrough/modalias.go `findBestMatch`, which
cites the libvirt commit as its origin). The pattern grammar is the kernel's own (`do_pci_entry`): each field is
either its value in fixed-width upper-case hex (%08X for the 32-bit IDs, %02X for the class bytes) or `*`, and
`add_wildcard` appends one `*` when the last field is not already one. A device's modalias is written by
drivers/pci/pci-sysfs.c `modalias_show` as pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X: so a field either
equals the device's value or is `*`, and the trailing `*` matches the empty rest. Plain data, no I/O:
`formats.modalias` parses the file, `host.kmod` finds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from isogroup.core.drivers import VFIO_PCI
from isogroup.core.model import PciFunction

# The generic module's name in modules.alias and its driver's name in /sys/bus/pci/drivers differ (vfio_pci.c
# names its pci_driver "vfio-pci"); every variant driver registers as KBUILD_MODNAME, so module = driver there.
GENERIC_MODULE = "vfio_pci"


def module_driver(module: str) -> str:
    """The PCI driver a vfio_pci: alias's module registers."""
    return VFIO_PCI if module in (GENERIC_MODULE, VFIO_PCI) else module


@dataclass(frozen=True)
class VfioAlias:
    """One `alias vfio_pci:PATTERN MODULE` line. A field None is the pattern's `*` (any value)."""

    module: str
    vendor: int | None
    device: int | None
    subvendor: int | None
    subdevice: int | None
    base_class: int | None
    subclass: int | None
    interface: int | None
    line: int  # in the file, for messages

    @property
    def driver(self) -> str:
        return module_driver(self.module)

    @property
    def fields(self) -> tuple[int | None, ...]:
        return (
            self.vendor,
            self.device,
            self.subvendor,
            self.subdevice,
            self.base_class,
            self.subclass,
            self.interface,
        )

    @property
    def wildcards(self) -> int:
        """How many fields are `*`: libvirt's measure of how specific a match is (fewer: better)."""
        return sum(1 for f in self.fields if f is None)

    def matches(self, func: PciFunction) -> bool | None:
        """Whether the device's modalias matches. None when it cannot be told: the pattern names a subsystem ID
        and the function's subsystem IDs were not recorded (an older snapshot)."""
        sub: tuple[int | None, int | None] = func.subsystem if func.subsystem is not None else (None, None)
        values = (
            func.vendor,
            func.device,
            sub[0],
            sub[1],
            (func.class_code >> 16) & 0xFF,
            (func.class_code >> 8) & 0xFF,
            func.class_code & 0xFF,
        )
        unknown = False
        for pattern, value in zip(self.fields, values, strict=True):
            if pattern is None:
                continue
            if value is None:
                unknown = True
            elif pattern != value:
                return False
        return None if unknown else True


@dataclass(frozen=True)
class VariantTable:
    """The vfio_pci: aliases of one kernel's modules.alias, in file order. `source` names the file; `read` False
    when there was none to read (a snapshot checked without one, a tree without /lib/modules): then every device
    goes to vfio-pci as far as isogroup can tell."""

    aliases: tuple[VfioAlias, ...] = ()
    source: str = ""
    read: bool = False


NO_VARIANTS = VariantTable()


@dataclass(frozen=True)
class Choice:
    """The VFIO driver chosen for one device, and why, in words for a report."""

    driver: str
    why: str
    alias: VfioAlias | None = None  # the modules.alias line that chose it; None: the generic default or a model


def best_alias(table: VariantTable, func: PciFunction) -> VfioAlias | None:
    """libvirt's "best" vfio_pci: alias for the device: the matching line with the fewest `*` fields, the first
    in file order on a tie. A line that cannot be told (subsystem IDs unknown) is skipped."""
    best: VfioAlias | None = None
    for alias in table.aliases:
        if alias.matches(func) is True and (best is None or alias.wildcards < best.wildcards):
            best = alias
    return best


def choose(table: VariantTable, func: PciFunction, model: str | None = None) -> Choice:
    """The driver libvirt ≥ 10 binds a managed='yes' hostdev to (`model` is its `<driver model=.../>`), and the one
    isogroup binds a member it moves (no model: members are not in the domain XML)."""
    if model is not None:
        return Choice(model, "<driver model> in the domain XML")
    alias = best_alias(table, func)
    if alias is None or alias.driver == VFIO_PCI:
        if alias is not None:
            why = f"{table.source} line {alias.line}: only the generic vfio_pci alias matches"
        else:
            why = "no vfio_pci alias matches" if table.read else "no modules.alias read"
        return Choice(VFIO_PCI, why, alias)
    return Choice(alias.driver, f"{table.source} line {alias.line}: best vfio_pci alias ({alias.wildcards} '*')", alias)
