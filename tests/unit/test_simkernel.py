"""The simulated kernel must answer writes the way Linux does, or every test built on it proves nothing.

Each rule of drivers/base (bind, unbind, drivers_probe), drivers/pci (driver_override, ID matching, new_id),
vfio-pci's probe and VFIO's group ownership gets its own test, refusals included; then the round trip through
isogroup's scanner, concurrency between forked writers, and each kind of injected fault.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes.hostfixtures import kernel_digest
from fakes.simkernel import (
    PCI_STUB,
    VFIO_PCI,
    FailNth,
    FailPath,
    Faults,
    KernelWouldBlock,
    KillAt,
    KillWhen,
    NeverBind,
    SimKernel,
    SimulationError,
    is_vfio_driver,
    make_function,
    make_topology,
    manages_own_dma,
    open_error,
    store_error,
)
from isogroup.core import drivers
from isogroup.core.address import PciAddress
from isogroup.core.model import Header, HostTopology, PciFunction
from isogroup.errors import HostError
from isogroup.formats import snapshot
from isogroup.host.hostscan import read_topology
from isogroup.host.sysfs import Sysfs
from testpaths import SAMPLES

SAMPLE_HOSTS = sorted((SAMPLES / "hosts").glob("*.json"))

ROOT_PORT = "0000:00:01.0"
GPU = "0000:01:00.0"
GPU_AUDIO = "0000:01:00.1"
PF = "0000:03:00.0"
VF0 = "0000:03:10.0"
VF1 = "0000:03:10.2"
USB = "0000:05:00.0"  # unbound, but xhci_hcd's ID table matches it
NIC_A = "0000:06:00.0"  # two identical NICs: new_id captures both
NIC_B = "0000:07:00.0"


def desktop() -> HostTopology:
    """A GPU and its audio function behind a root port (one group), an SR-IOV NIC, a USB controller."""
    return make_topology(
        [
            make_function(ROOT_PORT, class_code=0x060400, header=Header.BRIDGE, driver="pcieport", group=1),
            make_function(
                GPU,
                class_code=0x030000,
                vendor=0x10DE,
                device=0x1B80,
                driver="nvidia",
                group=1,
                parent=ROOT_PORT,
                multifunction=True,
                boot_vga=True,
            ),
            make_function(
                GPU_AUDIO,
                class_code=0x040300,
                vendor=0x10DE,
                device=0x10F0,
                driver="snd_hda_intel",
                group=1,
                parent=ROOT_PORT,
                multifunction=True,
            ),
            make_function(PF, driver="ixgbe", group=5, sriov_totalvfs=8, sriov_numvfs=2, device=0x10FB),
            make_function(VF0, driver="ixgbevf", group=6, physfn=PF, device=0x10ED),
            make_function(VF1, driver="ixgbevf", group=7, physfn=PF, device=0x10ED),
            make_function(USB, class_code=0x0C0330, vendor=0x1B21, device=0x2142, group=9),
            make_function(NIC_A, vendor=0x8086, device=0x1533, driver="igb", group=10),
            make_function(NIC_B, vendor=0x8086, device=0x1533, driver="igb", group=11),
        ]
    )


@pytest.fixture
def sim(tmp_path: Path) -> SimKernel:
    return SimKernel.materialize(tmp_path / "sys", desktop(), native={PciAddress.parse(USB): "xhci_hcd"})


def dev(address: str, attr: str) -> str:
    return Sysfs.device(PciAddress.parse(address), attr)


def drv(name: str, attr: str) -> str:
    return Sysfs.driver_dir(name, attr)


def refused(sim: SimKernel, rel: str, value: str) -> int | None:
    """Write and return the errno of the HostError it must raise."""
    with pytest.raises(HostError) as info:
        sim.write(rel, value)
    return info.value.errno


def detach_to_vfio(sim: SimKernel, address: str) -> None:
    """What libvirt does for a managed hostdev: override, unbind, probe."""
    sim.write(dev(address, "driver_override"), "vfio-pci\n")
    driver = sim.driver(address)
    if driver is not None:
        sim.write(drv(driver, "unbind"), address)
    sim.write("bus/pci/drivers_probe", address)


def spawn(body: Callable[[], None]) -> int:
    """Run `body` in a forked process (a hook run); its exit status is 0 when it returned."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def in_child(body: Callable[[], None]) -> int:
    """Run `body` in a forked process and return its wait status."""
    return os.waitpid(spawn(body), 0)[1]


# --- the tree --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", SAMPLE_HOSTS, ids=[p.stem for p in SAMPLE_HOSTS])
def test_round_trip_of_sample_hosts(tmp_path: Path, host: Path) -> None:
    loaded = snapshot.load(host)
    # The PCI part round-trips; host-use findings are not sysfs (they come from probes of /proc and netlink).
    topology = type(loaded).build(loaded.iommu, loaded.functions, loaded.groups)
    assert read_topology(SimKernel.materialize(tmp_path / "sys", topology)) == topology


def test_round_trip_of_the_test_desktop(sim: SimKernel) -> None:
    assert sim.topology() == desktop()


HOST_DRIVERS = ["e1000e", "nvidia", "pcieport", "snd_hda_intel", VFIO_PCI, PCI_STUB]
PHANTOM_BRIDGE = PciAddress(0, 0x7F, 0, 0)  # an ancestor a scoped capture left out; no generated address uses it


@st.composite
def topologies(draw: st.DrawFn) -> HostTopology:
    iommu = draw(st.booleans())
    address = st.builds(PciAddress, st.sampled_from([0, 1]), st.integers(0, 5), st.integers(0, 31), st.integers(0, 7))
    functions: list[PciFunction] = []
    bridges: list[PciAddress] = [PHANTOM_BRIDGE]
    for addr in draw(st.lists(address, min_size=1, max_size=12, unique=True)):
        func = draw(functions_at(addr, iommu, bridges))
        functions.append(func)
        if func.is_bridge:
            bridges.append(addr)
    pfs = [f.address for f in functions if f.sriov_totalvfs is not None] + [PciAddress(0, 0x7F, 0, 1)]
    vfs = draw(st.lists(st.sampled_from(pfs), min_size=len(functions), max_size=len(functions)))
    for i, (func, pf) in enumerate(zip(functions, vfs, strict=True)):
        if func.sriov_totalvfs is None and not func.is_bridge and draw(st.booleans()):
            functions[i] = replace(func, physfn=pf)
    return make_topology(functions, iommu=iommu)


@st.composite
def functions_at(draw: st.DrawFn, addr: PciAddress, iommu: bool, bridges: list[PciAddress]) -> PciFunction:
    header = draw(st.sampled_from(Header))
    endpoint_classes = [0x030000, 0x020000, 0x040300, 0x0C0330, 0x010802]
    class_code = {Header.BRIDGE: 0x060400, Header.CARDBUS: 0x060700}.get(header) or draw(
        st.sampled_from(endpoint_classes)
    )
    pf = header is Header.ENDPOINT and draw(st.booleans())
    return make_function(
        str(addr),
        class_code=class_code,
        header=header,
        vendor=draw(st.integers(0, 0xFFFF)),
        device=draw(st.integers(0, 0xFFFF)),
        driver=draw(st.none() | st.sampled_from(HOST_DRIVERS)),
        driver_override=draw(st.none() | st.sampled_from([VFIO_PCI, PCI_STUB, "nvidia"])),
        group=draw(st.none() | st.integers(0, 6)) if iommu else None,
        parent=str(draw(st.sampled_from(bridges))) if draw(st.booleans()) else None,
        multifunction=draw(st.booleans()),
        boot_vga=class_code >> 8 == 0x0300 and draw(st.booleans()),
        sriov_totalvfs=draw(st.integers(1, 64)) if pf else None,
        sriov_numvfs=draw(st.integers(0, 8)) if pf else None,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_round_trip_of_generated_topologies(topology: HostTopology) -> None:
    if topology.iommu and not topology.groups:
        topology = HostTopology.build(False, topology.functions, ())  # the scanner reads "no groups" as no IOMMU
    with tempfile.TemporaryDirectory() as tmp:
        assert read_topology(SimKernel.materialize(Path(tmp) / "sys", topology)) == topology


# The fake keeps its own record and draws the tree from it; isogroup's scanner reads the tree. After any sequence
# of writes the two must agree: a drawing bug, or a scanner bug, shows as a difference.
DRIVER_NAMES = ["nvidia", "snd_hda_intel", "ixgbe", "ixgbevf", "igb", "xhci_hcd", "pcieport", VFIO_PCI, PCI_STUB]
DEVICES = [ROOT_PORT, GPU, GPU_AUDIO, PF, VF0, VF1, USB, NIC_A, NIC_B]


@st.composite
def kernel_operations(draw: st.DrawFn) -> tuple[str, str, str]:
    """One thing a writer or the kernel's user does: (kind, device, driver or value)."""
    kind = draw(st.sampled_from(["override", "clear", "unbind", "probe", "bind", "new_id", "rmmod", "unplug"]))
    return kind, draw(st.sampled_from(DEVICES)), draw(st.sampled_from(DRIVER_NAMES))


def apply_operation(sim: SimKernel, kind: str, address: str, driver: str) -> None:
    if kind == "unplug":
        if address in {str(a) for a in sim.topology().by_address}:
            sim.remove_device(address)
        return
    if kind == "rmmod":
        sim.unload_driver(driver)
        return
    rel, value = {
        "override": (dev(address, "driver_override"), driver),
        "clear": (dev(address, "driver_override"), "\n"),
        "unbind": (drv(sim.driver(address) or driver, "unbind"), address),
        "probe": ("bus/pci/drivers_probe", address),
        "bind": (drv(driver, "bind"), address),
        "new_id": (drv(driver, "new_id"), "8086 1533"),
    }[kind]
    with contextlib.suppress(HostError):  # a refusal is an answer too: the record and the tree must still agree
        sim.write(rel, value)


def devfs_groups(sim: SimKernel) -> set[int]:
    return {int(node.name) for node in (sim.devfs / "vfio").iterdir()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(kernel_operations(), max_size=12))
def test_the_scanner_reads_what_the_fake_records(operations: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimKernel.materialize(Path(tmp) / "sys", desktop(), native={PciAddress.parse(USB): "xhci_hcd"})
        for kind, address, driver in operations:
            apply_operation(sim, kind, address, driver)
            recorded = sim.topology()
            assert read_topology(sim) == recorded, (kind, address, driver)
            assert devfs_groups(sim) == {g.number for g in recorded.groups if sim.vfio_group_exists(g.number)}


def test_the_fakes_view_does_not_go_through_the_scanner(sim: SimKernel) -> None:
    """Mending the tree behind the fake's back shows: the scanner sees the tree, the fake its own record."""
    os.unlink(sim.root / dev(GPU, "driver"))
    assert read_topology(sim).by_address[PciAddress.parse(GPU)].driver is None
    assert sim.topology().by_address[PciAddress.parse(GPU)].driver == "nvidia"
    assert sim.driver(GPU) == "nvidia"


def test_the_fake_imports_no_scanner() -> None:
    code = "import sys, fakes.simkernel; print([m for m in sys.modules if m.startswith('isogroup.host.hostscan')])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_attributes_use_the_kernels_formats(sim: SimKernel) -> None:
    assert (sim.root / dev(GPU, "vendor")).read_text() == "0x10de\n"
    assert (sim.root / dev(GPU, "class")).read_text() == "0x030000\n"
    assert (sim.root / dev(GPU, "driver_override")).read_text() == "(null)\n"
    assert (sim.root / dev(GPU, "boot_vga")).read_text() == "1\n"
    assert not sim.exists(dev(GPU_AUDIO, "boot_vga"))  # only VGA-class devices have it
    config = (sim.root / dev(GPU, "config")).read_bytes()
    assert len(config) == 64
    assert config[0:4] == bytes.fromhex("de10801b")
    assert config[0x09:0x0C] == bytes.fromhex("000003")
    assert config[0x0E] == 0x80  # type-0 header, multifunction bit
    assert (sim.root / dev(ROOT_PORT, "config")).read_bytes()[0x0E] == 0x01


def test_only_bridges_have_bus_numbers_and_only_pfs_sriov(sim: SimKernel) -> None:
    assert sim.read(dev(ROOT_PORT, "secondary_bus_number")) == "1"
    assert sim.read(dev(ROOT_PORT, "subordinate_bus_number")) == "1"
    assert not sim.exists(dev(GPU, "secondary_bus_number"))
    assert (sim.read(dev(PF, "sriov_totalvfs")), sim.read(dev(PF, "sriov_numvfs"))) == ("8", "2")
    assert not sim.exists(dev(VF0, "sriov_numvfs"))
    assert os.readlink(sim.root / dev(VF0, "physfn")) == "../0000:03:00.0"
    assert os.readlink(sim.root / dev(PF, "virtfn1")) == "../0000:03:10.2"


def test_links_are_relative_as_in_sysfs(sim: SimKernel) -> None:
    assert os.readlink(sim.root / dev(GPU, "")) == "../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0"
    assert os.readlink(sim.root / dev(ROOT_PORT, "driver")) == "../../../bus/pci/drivers/pcieport"
    assert os.readlink(sim.root / dev(GPU, "driver")) == "../../../../bus/pci/drivers/nvidia"
    assert os.readlink(sim.root / dev(GPU, "iommu_group")) == "../../../../kernel/iommu_groups/1"
    group_link = sim.root / f"kernel/iommu_groups/1/devices/{GPU}"
    assert os.readlink(group_link) == "../../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0"
    assert os.readlink(sim.root / drv("nvidia", GPU)) == "../../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0"
    assert all((sim.root / p).resolve().exists() for p in (dev(GPU, "driver"), dev(GPU, "iommu_group")))


def test_driver_dirs_exist_for_topology_drivers_vfio_and_stub(sim: SimKernel) -> None:
    for name in ("pcieport", "nvidia", "ixgbevf", "xhci_hcd", VFIO_PCI, PCI_STUB):
        assert {"bind", "unbind", "new_id", "remove_id"} <= set(sim.listdir(drv(name, "")))
    assert sim.exists("bus/pci/drivers_probe")


def test_without_an_iommu_there_are_no_groups_and_vfio_cannot_bind(tmp_path: Path) -> None:
    topology = make_topology([make_function(GPU, class_code=0x030000, driver="nvidia")], iommu=False)
    sim = SimKernel.materialize(tmp_path / "sys", topology)
    assert sim.listdir("kernel/iommu_groups") == []
    assert not sim.exists(dev(GPU, "iommu_group"))
    sim.write(dev(GPU, "driver_override"), "vfio-pci")
    sim.write(drv("nvidia", "unbind"), GPU)
    assert refused(sim, drv(VFIO_PCI, "bind"), GPU) == errno.EINVAL  # vfio_group_find_or_alloc() fails


def test_materialize_refuses_what_no_kernel_shows(tmp_path: Path) -> None:
    nic_with_boot_vga = make_topology([make_function(GPU, boot_vga=True, group=1)])
    with pytest.raises(ValueError, match="boot_vga"):
        SimKernel.materialize(tmp_path / "a", nic_with_boot_vga)
    groups_without_iommu = HostTopology.build(False, desktop().functions, desktop().groups)
    with pytest.raises(ValueError, match="iommu is false"):
        SimKernel.materialize(tmp_path / "b", groups_without_iommu)
    with pytest.raises(ValueError, match="not loaded"):
        SimKernel.materialize(
            tmp_path / "c", make_topology([make_function(GPU, driver=VFIO_PCI, group=1)]), vfio_loaded=False
        )


def test_vfio_pci_appears_on_modprobe_and_claims_overridden_devices(tmp_path: Path) -> None:
    sim = SimKernel.materialize(tmp_path / "sys", desktop(), vfio_loaded=False)
    assert not sim.exists(drv(VFIO_PCI, ""))
    sim.write(dev(GPU_AUDIO, "driver_override"), "vfio-pci")
    sim.write(drv("snd_hda_intel", "unbind"), GPU_AUDIO)
    with pytest.raises(HostError, match="No such file"):
        sim.write(drv(VFIO_PCI, "bind"), GPU_AUDIO)
    sim.modprobe("vfio_pci")
    assert sim.driver(GPU_AUDIO) == VFIO_PCI  # driver_register() -> driver_attach()
    sim.modprobe("vfio-pci")  # already loaded: nothing happens
    assert sim.loaded_drivers().count(VFIO_PCI) == 1


# --- driver_override -------------------------------------------------------------------------------------


def test_override_is_stored_without_newline_and_binds_nothing(sim: SimKernel) -> None:
    sim.write(dev(GPU, "driver_override"), "vfio-pci\n")
    assert (sim.root / dev(GPU, "driver_override")).read_text() == "vfio-pci\n"
    assert sim.driver(GPU) == "nvidia"
    assert sim.topology().by_address[PciAddress.parse(GPU)].driver_override == VFIO_PCI


@pytest.mark.parametrize(
    ("value", "shown"),
    [("\n", "(null)"), ("\0", "(null)"), ("", "vfio-pci"), ("pci-stub\nxyz", "pci-stub")],
    ids=["newline-clears", "nul-clears", "zero-length-is-no-write", "up-to-newline"],
)
def test_override_clearing_rules(sim: SimKernel, value: str, shown: str) -> None:
    sim.write(dev(GPU, "driver_override"), "vfio-pci")
    sim.write(dev(GPU, "driver_override"), value)
    assert sim.read(dev(GPU, "driver_override")) == shown


def test_override_longer_than_a_page_is_refused(sim: SimKernel) -> None:
    assert refused(sim, dev(GPU, "driver_override"), "x" * 4095) == errno.EINVAL
    assert sim.read(dev(GPU, "driver_override")) == "(null)"


# --- unbind ----------------------------------------------------------------------------------------------


def test_unbind_removes_both_links(sim: SimKernel) -> None:
    sim.write(drv("nvidia", "unbind"), GPU)
    assert sim.driver(GPU) is None
    assert not sim.exists(drv("nvidia", GPU))


def test_unbind_through_the_devices_driver_link(sim: SimKernel) -> None:
    sim.write(dev(GPU, "driver/unbind"), GPU)  # what libvirt writes
    assert sim.driver(GPU) is None


@pytest.mark.parametrize("value", [GPU_AUDIO, "0000:0a:00.0", "01:00.0"], ids=["other-driver", "absent", "short"])
def test_unbind_refuses_a_device_not_bound_to_that_driver(sim: SimKernel, value: str) -> None:
    assert refused(sim, drv("nvidia", "unbind"), value) == errno.ENODEV
    assert sim.driver(GPU) == "nvidia"


# --- bind ------------------------------------------------------------------------------------------------


def test_bind_to_the_native_driver(sim: SimKernel) -> None:
    sim.write(drv("nvidia", "unbind"), GPU)
    sim.write(drv("nvidia", "bind"), GPU + "\n")  # sysfs_streq() forgives one newline
    assert sim.driver(GPU) == "nvidia"
    assert sim.exists(drv("nvidia", GPU))


def test_bind_refuses_a_bound_device(sim: SimKernel) -> None:
    assert refused(sim, drv("nvidia", "bind"), GPU) == errno.EBUSY


@pytest.mark.parametrize(
    ("override", "driver"),
    [(None, VFIO_PCI), (None, "e1000e"), ("vfio-pci", "nvidia"), ("pci-stub", VFIO_PCI)],
    ids=["vfio-without-override", "foreign-driver", "override-excludes-native", "override-to-another"],
)
def test_bind_refuses_a_driver_that_does_not_match(sim: SimKernel, override: str | None, driver: str) -> None:
    sim.load_driver("e1000e")
    if override:
        sim.write(dev(GPU, "driver_override"), override)
    sim.write(drv("nvidia", "unbind"), GPU)
    assert refused(sim, drv(driver, "bind"), GPU) == errno.ENODEV
    assert sim.driver(GPU) is None


def test_vfio_refuses_a_bridge(sim: SimKernel) -> None:
    sim.write(dev(ROOT_PORT, "driver_override"), "vfio-pci")
    sim.write(drv("pcieport", "unbind"), ROOT_PORT)
    assert refused(sim, drv(VFIO_PCI, "bind"), ROOT_PORT) == errno.EINVAL
    assert sim.driver(ROOT_PORT) is None


def test_vfio_refuses_a_pf_with_vfs_enabled(sim: SimKernel) -> None:
    sim.write(dev(PF, "driver_override"), "vfio-pci")
    sim.write(drv("ixgbe", "unbind"), PF)
    assert refused(sim, drv(VFIO_PCI, "bind"), PF) == errno.EBUSY
    assert sim.driver(PF) is None


def test_bind_refuses_a_device_that_is_gone(sim: SimKernel) -> None:
    sim.remove_device(USB)
    assert refused(sim, drv("xhci_hcd", "bind"), USB) == errno.ENODEV


def test_variant_drivers_refuse_like_vfio_pci(sim: SimKernel) -> None:
    sim.load_driver("ixgbe_vfio_pci")
    sim.write(dev(PF, "driver_override"), "ixgbe_vfio_pci")
    sim.write(drv("ixgbe", "unbind"), PF)
    assert refused(sim, drv("ixgbe_vfio_pci", "bind"), PF) == errno.EBUSY


# --- drivers_probe ---------------------------------------------------------------------------------------


def test_probe_leaves_a_bound_device_alone(sim: SimKernel) -> None:
    sim.write(dev(GPU, "driver_override"), "vfio-pci")
    sim.write("bus/pci/drivers_probe", GPU)
    assert sim.driver(GPU) == "nvidia"


def test_probe_prefers_the_override(sim: SimKernel) -> None:
    detach_to_vfio(sim, GPU)
    assert sim.driver(GPU) == VFIO_PCI


def test_probe_with_an_override_to_an_unloaded_driver_binds_nothing(sim: SimKernel) -> None:
    sim.write(dev(GPU, "driver_override"), "nouveau")
    sim.write(drv("nvidia", "unbind"), GPU)
    sim.write("bus/pci/drivers_probe", GPU)
    assert sim.driver(GPU) is None


def test_probe_without_override_binds_the_native_driver(sim: SimKernel) -> None:
    sim.write("bus/pci/drivers_probe", USB)
    assert sim.driver(USB) == "xhci_hcd"


def test_probe_failure_leaves_the_device_unbound_but_the_write_succeeds(sim: SimKernel) -> None:
    detach_to_vfio(sim, PF)  # vfio-pci's probe refuses a PF with VFs: no error reaches userspace
    assert sim.driver(PF) is None
    assert sim.write_log()[-1].outcome == "ok"


def test_probe_of_an_absent_device(sim: SimKernel) -> None:
    assert refused(sim, "bus/pci/drivers_probe", "0000:0a:00.0") == errno.ENODEV


def test_set_native_driver_changes_what_a_probe_binds(sim: SimKernel) -> None:
    sim.load_driver("uhci_hcd")
    sim.set_native_driver(USB, "uhci_hcd")
    sim.write("bus/pci/drivers_probe", USB)
    assert (sim.native_driver(USB), sim.driver(USB)) == ("uhci_hcd", "uhci_hcd")


# --- new_id / remove_id ----------------------------------------------------------------------------------


def test_new_id_captures_every_unbound_identical_device(sim: SimKernel) -> None:
    sim.write(drv("igb", "unbind"), NIC_A)
    sim.write(drv("igb", "unbind"), NIC_B)
    sim.write(drv(VFIO_PCI, "new_id"), "8086 1533")
    assert (sim.driver(NIC_A), sim.driver(NIC_B)) == (VFIO_PCI, VFIO_PCI)
    assert refused(sim, drv(VFIO_PCI, "new_id"), "8086 1533") == errno.EEXIST


def test_remove_id_keeps_bound_devices_and_stops_new_matches(sim: SimKernel) -> None:
    sim.write(drv("igb", "unbind"), NIC_A)
    sim.write(drv(VFIO_PCI, "new_id"), "0x8086 0x1533")
    sim.write(drv(VFIO_PCI, "remove_id"), "8086 1533")
    assert sim.driver(NIC_A) == VFIO_PCI
    sim.write(drv("igb", "unbind"), NIC_B)
    assert refused(sim, drv(VFIO_PCI, "bind"), NIC_B) == errno.ENODEV
    assert refused(sim, drv(VFIO_PCI, "remove_id"), "8086 1533") == errno.ENODEV
    assert refused(sim, drv(VFIO_PCI, "new_id"), "8086") == errno.EINVAL


# --- DMA ownership: a group QEMU holds -------------------------------------------------------------------


def test_open_group_needs_the_node_and_viability(sim: SimKernel) -> None:
    with pytest.raises(FileNotFoundError):
        sim.open_group(1)
    detach_to_vfio(sim, GPU)
    with pytest.raises(OSError, match="not viable") as info:
        sim.open_group(1)  # the audio function is still on snd_hda_intel
    assert info.value.errno == errno.EBUSY
    detach_to_vfio(sim, GPU_AUDIO)
    sim.open_group(1)
    with pytest.raises(OSError, match="already open"):
        sim.open_group(1)


def test_an_owned_group_refuses_host_drivers_but_not_vfio(sim: SimKernel) -> None:
    detach_to_vfio(sim, GPU)
    sim.write(dev(GPU_AUDIO, "driver_override"), "vfio-pci")
    sim.write(drv("snd_hda_intel", "unbind"), GPU_AUDIO)
    sim.open_group(1)  # viable: the audio function is unbound
    sim.write(dev(GPU_AUDIO, "driver_override"), "\n")
    assert refused(sim, drv("snd_hda_intel", "bind"), GPU_AUDIO) == errno.EBUSY
    assert refused(sim, "bus/pci/drivers_probe", GPU_AUDIO) == errno.EINVAL  # -EBUSY before probe, then EINVAL
    assert sim.driver(GPU_AUDIO) is None
    sim.write(dev(GPU_AUDIO, "driver_override"), "pci-stub")
    sim.write("bus/pci/drivers_probe", GPU_AUDIO)
    assert sim.driver(GPU_AUDIO) == PCI_STUB  # driver_managed_dma


def test_closing_the_group_lets_host_drivers_back(sim: SimKernel) -> None:
    detach_to_vfio(sim, GPU)
    sim.write(drv("snd_hda_intel", "unbind"), GPU_AUDIO)
    sim.open_group(1)
    sim.close_group(1)
    sim.write(drv("snd_hda_intel", "bind"), GPU_AUDIO)
    assert sim.driver(GPU_AUDIO) == "snd_hda_intel"


def test_unbinding_a_device_qemu_holds_would_block(sim: SimKernel) -> None:
    detach_to_vfio(sim, USB)
    sim.open_group(9)
    with pytest.raises(KernelWouldBlock):
        sim.write(drv(VFIO_PCI, "unbind"), USB)
    assert sim.driver(USB) == VFIO_PCI


# --- viability and /dev/vfio ----------------------------------------------------------------------------


def test_viability_and_the_group_node_follow_the_members(sim: SimKernel) -> None:
    assert not sim.group_viable(1)
    detach_to_vfio(sim, GPU)
    assert (sim.group_viable(1), sim.vfio_group_exists(1)) == (False, True)
    detach_to_vfio(sim, GPU_AUDIO)
    assert sim.group_viable(1)  # the root port is on pcieport, which manages its own DMA
    assert (sim.devfs / "vfio" / "1").exists()
    sim.write(drv(VFIO_PCI, "unbind"), GPU)
    assert sim.vfio_group_exists(1)
    sim.write(drv(VFIO_PCI, "unbind"), GPU_AUDIO)
    assert not sim.vfio_group_exists(1)
    assert sim.group_viable(1)  # unbound members are fine


def test_the_group_status_ioctl_answers_through_the_seam(sim: SimKernel) -> None:
    assert sim.dev == sim.devfs
    assert sim.vfio_group_viable(1) is None  # no /dev/vfio/1 yet
    detach_to_vfio(sim, GPU)
    assert sim.vfio_group_viable(1) is False
    detach_to_vfio(sim, GPU_AUDIO)
    assert sim.vfio_group_viable(1) is True
    sim.open_group(1)
    assert sim.vfio_group_viable(1) is None  # QEMU holds it: opening it again gets EBUSY


def test_the_kernels_list_agrees_with_isogroups() -> None:
    """Where the kernel's driver_managed_dma drivers and drivers.py meet on real driver names. (drivers.py also
    accepts names ending "-vfio-pci", which no kernel driver has: KBUILD_MODNAME turns "-" into "_".)"""
    names = [None, VFIO_PCI, PCI_STUB, "pcieport", "mlx5_vfio_pci", "hisi_acc_vfio_pci", "nvgrace_gpu_vfio_pci"]
    names += ["nvidia", "snd_hda_intel", "xhci_hcd", "shpchp", "amdgpu", "vfio_pci"]
    assert [manages_own_dma(n) for n in names] == [drivers.is_viable_driver(n) for n in names]


# --- hot-unplug ------------------------------------------------------------------------------------------


def test_remove_device_takes_everything_about_it(sim: SimKernel) -> None:
    detach_to_vfio(sim, USB)
    sim.remove_device(USB)
    assert not sim.exists(dev(USB, ""))
    assert not sim.exists(drv(VFIO_PCI, USB))
    assert not sim.exists("kernel/iommu_groups/9")  # its last device took the group with it
    assert not sim.vfio_group_exists(9)
    assert PciAddress.parse(USB) not in sim.topology().by_address


def test_removing_a_bridge_or_a_pf_removes_what_hangs_off_it(sim: SimKernel) -> None:
    sim.remove_device(ROOT_PORT)
    sim.remove_device(PF)
    left = {str(a) for a in sim.topology().by_address}
    assert left == {USB, NIC_A, NIC_B}
    assert sim.listdir(drv("nvidia", "")) == ["bind", "new_id", "remove_id", "unbind"]


# --- how refusals look to the code under test -----------------------------------------------------------


def test_refusals_raise_what_the_real_seam_raises(tmp_path: Path) -> None:
    real = Sysfs(tmp_path)
    with pytest.raises(HostError) as opened:
        real.write("missing", "x")
    mine = open_error(tmp_path / "missing", errno.ENOENT)
    assert (str(opened.value), opened.value.errno) == (str(mine), mine.errno)
    with pytest.raises(HostError) as written:
        Sysfs("/dev").write("full", "0000:01:00.0\n")  # write(2) fails with ENOSPC
    mine = store_error(Path("/dev/full"), "0000:01:00.0\n", errno.ENOSPC)
    assert (str(written.value), written.value.errno) == (str(mine), mine.errno)


@pytest.mark.parametrize(
    ("rel", "message"),
    [(dev(GPU, "vendor"), "Permission denied"), (dev(GPU, "reset"), "No such file"), (dev(GPU, ""), "Is a directory")],
    ids=["read-only", "unknown", "directory"],
)
def test_writes_the_kernel_cannot_open(sim: SimKernel, rel: str, message: str) -> None:
    with pytest.raises(HostError, match=f"cannot open .*{message}"):
        sim.write(rel, "1")
    assert sim.read(dev(GPU, "vendor")) == "0x10de"


def test_writes_the_simulation_does_not_model_fail_loudly(sim: SimKernel) -> None:
    with pytest.raises(SimulationError):
        sim.write(dev(PF, "sriov_numvfs"), "0")


# --- faults ----------------------------------------------------------------------------------------------


def test_fail_nth_fails_exactly_that_write_and_changes_nothing(sim: SimKernel) -> None:
    sim.write(drv("igb", "unbind"), NIC_A)  # before the faults: not counted
    sim.set_faults(Faults(fail_nth=(FailNth(2, errno.EIO),)))
    sim.write(dev(GPU, "driver_override"), "vfio-pci")
    assert refused(sim, drv("nvidia", "unbind"), GPU) == errno.EIO
    assert sim.driver(GPU) == "nvidia"
    sim.write(drv("nvidia", "unbind"), GPU)
    assert [r.outcome for r in sim.write_log()] == ["ok", "ok", "injected", "ok"]


def test_fail_path_matches_path_and_value_and_can_fire_once(sim: SimKernel) -> None:
    once = FailPath("bus/pci/drivers/*/unbind", errno.EBUSY, value=f"{GPU}*", times=1)
    sim.set_faults(Faults(fail_paths=(once,)))
    sim.write(drv("snd_hda_intel", "unbind"), GPU_AUDIO)  # another device: not matched
    assert refused(sim, drv("nvidia", "unbind"), GPU) == errno.EBUSY
    sim.write(drv("nvidia", "unbind"), GPU)  # the retry succeeds
    assert sim.driver(GPU) is None


def test_the_bind_that_never_comes(sim: SimKernel) -> None:
    sim.set_faults(Faults(never_bind=(NeverBind(address=GPU, driver=VFIO_PCI),)))
    detach_to_vfio(sim, GPU)
    assert sim.driver(GPU) is None
    sim.write(drv(VFIO_PCI, "bind"), GPU)
    assert sim.driver(GPU) is None
    assert all(r.outcome == "ok" for r in sim.write_log())


@pytest.mark.parametrize(("when", "effect"), [(KillWhen.BEFORE, "nvidia"), (KillWhen.AFTER, None)])
def test_kill_around_the_nth_write(sim: SimKernel, when: KillWhen, effect: str | None) -> None:
    sim.set_faults(Faults(kill=(KillAt(2, when),)))

    def hook_run() -> None:
        child = SimKernel(sim.root)  # a separate process attaching to the tree: the faults come with it
        child.write(dev(GPU, "driver_override"), "vfio-pci")
        child.write(drv("nvidia", "unbind"), GPU)
        child.write("bus/pci/drivers_probe", GPU)  # never reached

    status = in_child(hook_run)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert sim.driver(GPU) == effect
    assert [r.outcome for r in sim.write_log()] == ["ok", "killed" if when is KillWhen.BEFORE else "ok"]
    sim.write(dev(GPU, "driver_override"), "\n")  # the dead writer's lock is gone


def test_modprobe_can_fail(tmp_path: Path) -> None:
    sim = SimKernel.materialize(tmp_path / "sys", desktop(), vfio_loaded=False, faults=Faults(fail_modprobe=("vfio*",)))
    with pytest.raises(HostError, match="modprobe vfio-pci failed"):
        sim.modprobe("vfio-pci")
    assert not sim.exists(drv(VFIO_PCI, ""))


def test_faults_and_the_log_survive_across_processes(sim: SimKernel) -> None:
    sim.set_faults(Faults(fail_nth=(FailNth(1, errno.ENOMEM),)))

    def hook_run() -> None:
        with pytest.raises(HostError):
            SimKernel(sim.root).write(dev(GPU, "driver_override"), "vfio-pci")

    assert in_child(hook_run) == 0
    assert sim.writes() == [(dev(GPU, "driver_override"), "vfio-pci")]
    assert sim.write_log()[0].errno == errno.ENOMEM


# --- concurrency -----------------------------------------------------------------------------------------


def flip(root: Path, address: str, host_driver: str, rounds: int) -> Callable[[], None]:
    """A hook run that moves one device to vfio-pci and back, `rounds` times (4 writes a round)."""

    def body() -> None:
        sim = SimKernel(root)
        for _ in range(rounds):
            detach_to_vfio(sim, address)
            sim.write(dev(address, "driver_override"), "\n")
            sim.write(drv(VFIO_PCI, "unbind"), address)
            sim.write(drv(host_driver, "bind"), address)

    return body


def consistent(sim: SimKernel) -> Iterator[str]:
    """Every way the tree could contradict itself after racing writers."""
    for func in sim.topology().functions:
        bdf = str(func.address)
        if func.driver is not None and not sim.exists(drv(func.driver, bdf)):
            yield f"{bdf} -> {func.driver} without the driver's link"
        if func.iommu_group is not None and sim.vfio_group_exists(func.iommu_group) != any(
            is_vfio_driver(sim.driver(m)) for m in sim.group_members(func.iommu_group)
        ):
            yield f"/dev/vfio/{func.iommu_group} disagrees with its members"


def test_two_forked_writers_keep_the_tree_consistent(sim: SimKernel) -> None:
    rounds = 25
    pids = [spawn(flip(sim.root, GPU, "nvidia", rounds)), spawn(flip(sim.root, GPU_AUDIO, "snd_hda_intel", rounds))]
    assert [os.waitpid(pid, 0)[1] for pid in pids] == [0, 0]
    assert sim.write_count() == len(sim.writes()) == 2 * rounds * 6
    assert sorted(r.n for r in sim.write_log()) == list(range(1, 2 * rounds * 6 + 1))
    assert list(consistent(sim)) == []
    assert (sim.driver(GPU), sim.driver(GPU_AUDIO)) == ("nvidia", "snd_hda_intel")


def test_the_kernel_digest_sees_every_change_but_not_the_log(sim: SimKernel, tmp_path: Path) -> None:
    before = kernel_digest(sim)
    twin = SimKernel.materialize(tmp_path / "twin", desktop(), native={PciAddress.parse(USB): "xhci_hcd"})
    assert before == kernel_digest(twin)
    sim.write(dev(GPU, "driver_override"), "vfio-pci")
    changed = kernel_digest(sim)
    assert changed != before
    sim.write(dev(GPU, "driver_override"), "\n")
    assert kernel_digest(sim) == before and len(sim.writes()) == 2
    detach_to_vfio(sim, GPU_AUDIO)
    assert (sim.devfs / "vfio" / "1").exists()
    assert kernel_digest(sim) != before
