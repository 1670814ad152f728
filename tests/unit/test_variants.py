"""VFIO variant drivers: modules.alias's vfio_pci: lines parsed (the real file of Debian's 6.1 kernel among them),
libvirt's "best match" rule, <driver model>, the plan's target driver, and moves on the simulated kernel that bind
a variant, fall back to vfio-pci, and restore the original driver exactly.

xml-samples/kernel/debian-6.1.0-57-amd64.modules.alias: lines 1 and 20112-20122 of the modules.alias of
linux-image-6.1.0-57-amd64 (the kernel the VM bed unpacks), verbatim: that kernel ships no variant driver, only
vfio_pci's own alias. xml-samples/kernel/variants.modules.alias: the mlx5_vfio_pci line as upstream kernels write
it (drivers/vfio/pci/mlx5/main.c, PCI_DRIVER_OVERRIDE_DEVICE_VFIO(PCI_VENDOR_ID_MELLANOX, 0x101e)) and patterns
that 6.1's file2alias wrote for `pci:` aliases (uio_netx's subsystem-specific line, yenta_socket's class lines,
whose `i00*` ends with add_wildcard's `*`), given the vfio_pci: prefix and invented module names, to rank.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fakes.hostfixtures import AUDIO, GPU, ORIGINAL, USB, domain_xml, make_host
from fakes.simkernel import Faults, NeverBind, SimKernel, make_topology
from fakes.topologies import make_function
from isogroup.apply.transaction import Context, Stage, prepare, release
from isogroup.core.domain import DomainSpec, PciRequest, Source
from isogroup.core.model import PciFunction
from isogroup.core.plan import Action
from isogroup.core.planner import plan
from isogroup.core.report import plans_to_json, plans_to_text
from isogroup.core.variants import NO_VARIANTS, VariantTable, best_alias, choose
from isogroup.errors import InputError
from isogroup.formats.domainxml import parse_domain
from isogroup.formats.modalias import MAX_BYTES, parse_modules_alias
from isogroup.host.kmod import read_variants
from isogroup.host.ledger import Ledger
from testpaths import ROOT, SAMPLES

DEBIAN = SAMPLES / "kernel" / "debian-6.1.0-57-amd64.modules.alias"
VARIANTS = SAMPLES / "kernel" / "variants.modules.alias"
BED_KERNEL = ROOT / ".cache" / "vm" / "kernel" / "lib" / "modules" / "6.1.0-57-amd64" / "modules.alias"


def table(path: Path) -> VariantTable:
    return read_variants(path)


def fn(vendor: int, device: int, class_code: int = 0x020000, subsystem: tuple[int, int] | None = (0, 0)) -> PciFunction:
    return replace(
        make_function("0000:05:00.0", vendor=vendor, device=device, class_code=class_code), subsystem=subsystem
    )


# --- the file ----------------------------------------------------------------------------------------------------


def test_debian_61_excerpt_has_only_the_generic_alias() -> None:
    got = table(DEBIAN)
    assert got.read and [(a.module, a.line, a.wildcards) for a in got.aliases] == [("vfio_pci", 7, 7)]
    assert choose(got, fn(0x15B3, 0x101E)).driver == "vfio-pci"


@pytest.mark.skipif(not BED_KERNEL.exists(), reason="run scripts/setup.sh --test to unpack the bed's kernel")
def test_the_whole_real_file_of_the_bed_kernel() -> None:
    """All 26,223 lines of 6.1.0-57-amd64's modules.alias: one vfio_pci: line, at line 20117, the generic one."""
    got = parse_modules_alias(BED_KERNEL.read_bytes(), str(BED_KERNEL))
    assert [(a.module, a.line) for a in got.aliases] == [("vfio_pci", 20117)]
    # A Mellanox VF on that kernel: no mlx5_vfio_pci there, so vfio-pci, as libvirt would bind.
    assert choose(got, fn(0x15B3, 0x101E)).driver == "vfio-pci"


def test_fields_parse_as_the_kernel_writes_them() -> None:
    got = table(VARIANTS)
    mlx5, generic, netx, *_ = got.aliases
    assert (mlx5.module, mlx5.vendor, mlx5.device, mlx5.subvendor, mlx5.wildcards, mlx5.line) == (
        "mlx5_vfio_pci",
        0x15B3,
        0x101E,
        None,
        5,
        3,
    )
    assert generic.driver == "vfio-pci" and generic.wildcards == 7
    assert (netx.subvendor, netx.subdevice, netx.wildcards) == (0x15CF, 0, 3)
    yenta = got.aliases[4]
    assert (yenta.base_class, yenta.subclass, yenta.interface, yenta.wildcards) == (6, 7, 0, 3)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"alias vfio_pci:v000015B3d0000101Esv*sd*bc*sc* mlx5_vfio_pci", "not a PCI alias"),  # no i field
        (b"alias vfio_pci:v15B3d101Esv*sd*bc*sc*i* mlx5_vfio_pci", "not a PCI alias"),  # not fixed width
        (b"alias vfio_pci:v000015B3d0000101E*sv*sd*bc*sc*i* x_vfio_pci", "not a PCI alias"),  # a glob inside
        (b"alias vfio_pci:v*d*sv*sd*bc*sc*i*", "must be 'alias"),  # no module
        (b"alias vfio_pci:v*d*sv*sd*bc*sc*i* a b", "must be 'alias"),
        (b"alias vfio_pci:v*d*sv*sd*bc*sc*i* ../../x", "not a module name"),
        ("alias vfio_pci:v*d*sv*sd*bc*sc*i* m\u00e9".encode(), "not ASCII"),
    ],
)
def test_a_malformed_vfio_alias_is_one_line_naming_it(line: bytes, why: str) -> None:
    with pytest.raises(InputError) as err:
        parse_modules_alias(b"# Aliases\nalias pci:v*d*sv*sd*bc*sc*i* whatever\n" + line + b"\n", "m.alias")
    assert err.value.message.startswith("m.alias line 3: ") and why in err.value.message
    assert "\n" not in err.value.message


def test_other_lines_are_not_looked_at_and_size_is_bounded(tmp_path: Path) -> None:
    # Garbage on lines of other buses (and a vfio_pci: that is not at a line's start) is not ours to judge.
    data = b"\xff\xfe garbage\nalias usb:v* ok\n  alias vfio_pci:junk x\nalias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci"
    assert [a.line for a in parse_modules_alias(data, "m").aliases] == [4]
    with pytest.raises(InputError, match="larger than"):
        parse_modules_alias(b"#" * (MAX_BYTES + 1), "m")
    big = tmp_path / "modules.alias"
    big.write_bytes(b"#" * (MAX_BYTES + 1))
    with pytest.raises(InputError, match="larger than"):
        read_variants(big)
    # No file: no variants known, which is not an error (a kernel without modules, a tree without /lib).
    missing = read_variants(tmp_path / "none")
    assert not missing.read and missing.aliases == ()


# --- libvirt's rule ----------------------------------------------------------------------------------------------


def test_fewest_wildcards_wins_and_the_first_line_breaks_a_tie() -> None:
    got = table(VARIANTS)
    assert choose(got, fn(0x15B3, 0x101E)).driver == "mlx5_vfio_pci"
    assert choose(got, fn(0x15B3, 0x1017)).driver == "vfio-pci"  # a PF: only the generic alias matches
    # netx's subsystem-specific line (3 '*') beats its any-subsystem line (5 '*').
    assert choose(got, fn(0x15CF, 0x0010, subsystem=(0x15CF, 0))).driver == "netx_vfio_pci"
    assert choose(got, fn(0x15CF, 0x0010, subsystem=(0x1234, 0))).driver == "netx_any_vfio_pci"
    # Subsystem IDs not recorded (an older snapshot): a line naming them cannot be told and is skipped.
    assert choose(got, fn(0x15CF, 0x0010, subsystem=None)).driver == "netx_any_vfio_pci"
    # Class-specific lines: the class bytes must match; toshiba and second tie at 2 '*': the first line wins.
    assert choose(got, fn(0x1179, 0x0617, class_code=0x060700)).driver == "toshiba_vfio_pci"
    assert choose(got, fn(0x1179, 0x0617, class_code=0x060701)).driver == "vfio-pci"  # interface 01, not 00
    assert choose(got, fn(0x1217, 0x7777, class_code=0x060700)).driver == "yenta_vfio_pci"
    best = best_alias(got, fn(0x15B3, 0x101E))
    assert best is not None and best.line == 3


def test_model_wins_over_the_table_and_no_table_means_vfio_pci() -> None:
    got = table(VARIANTS)
    assert choose(got, fn(0x15B3, 0x101E), "vfio-pci").driver == "vfio-pci"  # libvirt's escape from a variant
    assert choose(NO_VARIANTS, fn(0x15B3, 0x101E)).driver == "vfio-pci"


# --- domain XML and the plan -------------------------------------------------------------------------------------


def test_driver_model_is_read_from_hostdev_and_interface() -> None:
    xml = (
        b"<domain><name>g</name><devices>"
        b"<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio' model='mlx5_vfio_pci'/>"
        b"<source><address bus='5' slot='0' function='0'/></source></hostdev>"
        b"<interface type='hostdev' managed='yes'><driver model='vfio-pci'/>"
        b"<source><address type='pci' bus='6' slot='0' function='0'/></source></interface>"
        b"<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/>"
        b"<source><address bus='7' slot='0' function='0'/></source></hostdev>"
        b"</devices></domain>"
    )
    assert [r.model for r in parse_domain(xml).pci] == ["mlx5_vfio_pci", "vfio-pci", None]


def test_a_driver_model_that_is_no_driver_name_is_refused_with_its_line() -> None:
    xml = (
        b"<domain><name>g</name><devices>\n<hostdev mode='subsystem' type='pci' managed='yes'>\n"
        b"<driver model='../unbind'/><source><address bus='5'/></source></hostdev></devices></domain>"
    )
    with pytest.raises(InputError, match=r"line 3: <driver model='../unbind'/> is not a driver name"):
        parse_domain(xml)


def _nic_group() -> tuple[PciFunction, PciFunction]:
    """A ConnectX VF (requested) sharing group 9 with another VF on mlx5_core (moved by isogroup)."""
    vf = make_function("0000:05:00.2", vendor=0x15B3, device=0x101E, driver="mlx5_core", group=9)
    other = make_function("0000:05:00.3", vendor=0x15B3, device=0x101E, driver="mlx5_core", group=9)
    return vf, other


def test_the_plan_shows_what_libvirt_and_isogroup_bind() -> None:
    vf, other = _nic_group()
    host = make_topology([vf, other])
    variants = table(VARIANTS)
    spec = DomainSpec("g", None, (PciRequest(vf.address, True, Source.HOSTDEV),))
    got = plan(spec, host, variants=variants)
    [group] = got.groups
    assert [(m.action, m.target) for m in group.members] == [
        (Action.LIBVIRT, "mlx5_vfio_pci"),
        (Action.MOVE, "mlx5_vfio_pci"),
    ]
    assert "must move to mlx5_vfio_pci" in group.members[1].why
    text = plans_to_text([got])
    assert "libvirt  -> mlx5_vfio_pci  requested" in text and "move     -> mlx5_vfio_pci  on mlx5_core" in text
    assert [m["target"] for m in plans_to_json([got])[0]["groups"][0]["members"]] == ["mlx5_vfio_pci"] * 2
    # <driver model='vfio-pci'/> forces libvirt's choice only: the member isogroup moves still takes the variant.
    forced = replace(spec, pci=(replace(spec.pci[0], model="vfio-pci"),))
    assert [m.target for m in plan(forced, host, variants=variants).groups[0].members] == [
        "vfio-pci",
        "mlx5_vfio_pci",
    ]
    # Without a table (a snapshot checked alone), vfio-pci, as before.
    assert [m.target for m in plan(spec, host).groups[0].members] == ["vfio-pci", "vfio-pci"]


# --- moving on the simulated kernel ------------------------------------------------------------------------------


def _variant_host(tmp_path: Path, faults: Faults | None = None) -> tuple[SimKernel, Context]:
    """The desktop host, with a modules.alias that gives the dGPU's audio function (10de:10fa) a variant."""
    alias = tmp_path / "modules.alias"
    alias.write_text(
        "# Aliases extracted from modules themselves.\n"
        "alias vfio_pci:v000010DEd000010FAsv*sd*bc*sc*i* hda_vfio_pci\n"
        "alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\n"
    )
    sim, ctx = make_host(tmp_path)
    if faults is not None:
        sim.set_faults(faults)
    return sim, replace(ctx, modules_alias=alias)


def test_a_moved_member_goes_to_its_variant_and_comes_back(tmp_path: Path) -> None:
    sim, ctx = _variant_host(tmp_path)
    assert "hda_vfio_pci" not in sim.loaded_drivers()
    domain = parse_domain(domain_xml("g", GPU))
    got = prepare(ctx, domain, Stage.PREPARE)
    audio = next(m for m in got.groups[0].members if m.address == AUDIO)
    assert audio.target == "hda_vfio_pci"
    assert sim.driver(AUDIO) == "hda_vfio_pci" and "hda_vfio_pci" in sim.loaded_drivers()  # modprobe'd
    assert sim.driver(USB) == "vfio-pci"  # no variant matches the USB function
    assert sim.group_viable(1) is False  # the GPU is still libvirt's to detach
    [claim] = Ledger(tmp_path / "run").read_all_unlocked()
    assert claim.device(AUDIO).original_driver == "snd_hda_intel"  # type: ignore[union-attr]
    release(ctx, "g")
    assert sim.driver(AUDIO) == ORIGINAL[AUDIO] and sim.driver(USB) == ORIGINAL[USB]
    assert sim.topology().by_address[AUDIO].driver_override is None  # the override is put back too


def test_an_absent_variant_falls_back_to_vfio_pci(tmp_path: Path) -> None:
    """modprobe fails (the module is not installed): the driver dir never appears, so vfio-pci."""
    sim, ctx = _variant_host(tmp_path, Faults(fail_modprobe=("hda_vfio_pci",)))
    prepare(ctx, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    assert sim.driver(AUDIO) == "vfio-pci" and "hda_vfio_pci" not in sim.loaded_drivers()
    release(ctx, "g")
    assert sim.driver(AUDIO) == ORIGINAL[AUDIO]


def test_a_variant_that_does_not_take_the_device_falls_back_to_vfio_pci(tmp_path: Path) -> None:
    sim, ctx = _variant_host(tmp_path, Faults(never_bind=(NeverBind(str(AUDIO), "hda_vfio_pci"),)))
    prepare(ctx, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    assert sim.driver(AUDIO) == "vfio-pci"
    assert sim.topology().by_address[AUDIO].driver_override == "vfio-pci"
    release(ctx, "g")
    assert sim.driver(AUDIO) == ORIGINAL[AUDIO] and sim.topology().by_address[AUDIO].driver_override is None


def test_a_broken_modules_alias_refuses_and_changes_nothing(tmp_path: Path) -> None:
    sim, ctx = _variant_host(tmp_path)
    assert ctx.modules_alias is not None
    ctx.modules_alias.write_text("alias vfio_pci:v10DEd*sv*sd*bc*sc*i* hda_vfio_pci\n")
    before = sim.write_count()
    with pytest.raises(InputError, match="line 1"):
        prepare(ctx, parse_domain(domain_xml("g", GPU)), Stage.PREPARE)
    assert sim.write_count() == before and not (tmp_path / "run").exists()


def test_check_takes_a_modules_alias(capsys: pytest.CaptureFixture[str]) -> None:
    from isogroup.cli.main import main

    case = ["check", "--host", str(SAMPLES / "hosts" / "desktop-gpu.json"), "--no-schema"]
    domain = str(SAMPLES / "domains" / "desktop-gpu.xml")
    alias = SAMPLES / "kernel" / "nvidia.modules.alias"
    assert main([*case, "--modules-alias", str(DEBIAN), domain]) == 0
    assert capsys.readouterr().out == (SAMPLES / "expected" / "desktop-gpu.txt").read_text()
    assert main([*case, "--modules-alias", str(alias), domain]) == 2
    assert "no such file" in capsys.readouterr().err
