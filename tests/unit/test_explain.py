"""`isogroup explain`: the kernel's grouping rules replayed on the host model (plugin/isogroup/core/explain/).

Every group of every sample host must come out as the kernel formed it; then each rule is shown to matter by
changing one fact and watching the prediction part from the kernel's group (a model that always agreed would
prove nothing); golden files hold the words; the quirk tables are checked against facts of the kernel source.
`pytest tests/unit/test_explain.py --regen-golden` rewrites the golden files (review the diff before keeping it).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fakes.simkernel import SimKernel, make_function, make_topology
from isogroup.cli.main import main
from isogroup.core.address import PciAddress
from isogroup.core.explain import Explanation, Prediction, SplitKind, explain, predicted_groups, to_json, to_text
from isogroup.core.kernel import configspace as cs
from isogroup.core.kernel import quirks
from isogroup.core.model import Header, HostTopology, PciFunction, UseCode
from isogroup.errors import InputError
from isogroup.formats import snapshot
from testpaths import SAMPLES

HOSTS = SAMPLES / "hosts"
EXPECTED = SAMPLES / "expected"
SAMPLE_HOSTS = sorted(HOSTS.glob("*.json"))

# Golden cases: name -> (host, address, what it shows). Files: expected/explain-NAME.txt and .json.
GOLDEN = {
    "gpu-behind-cpu-port": ("desktop-gpu", "01:00.0", "the CPU's root port has no ACS: the GPU joins it"),
    "cpu-port": ("desktop-gpu", "00:01.0", "the port itself: what is below it joins its group"),
    "spt-root-port": ("desktop-gpu", "00:1c.4", "Sunrise Point's 32-bit ACS registers: the kernel's quirk"),
    "igpu-no-group": ("desktop-gpu", "00:02.0", "igfx_off: the kernel gave the iGPU no group"),
    "vtd-off": ("desktop-vtd-off", "01:00.0", "no IOMMU: what the kernel would form"),
    "chipset-switch": ("amd-b450", "17:00.0", "Promontory: switch ports without ACS, multifunction upstream port"),
    "apu-function-with-acs": ("amd-b450", "38:00.1", "one function has ACS, its siblings do not"),
    "conventional-pci": ("pci-bridge", "05:01.0", "ASM1083 hiding its PCIe capability: one requester ID"),
    "ricoh-alias": ("ricoh-laptop", "03:00.1", "Ricoh function 1 DMAs as function 0"),
    "pch-functions": ("laptop", "00:14.3", "conventional PCH functions on the root bus"),
    "sriov-vf": ("server-sriov", "3b:02.0", "a VF alone behind an ACS root port"),
    "x710-pf": ("server-sriov", "3b:00.1", "an ACS capability that implements nothing: all counted hard-wired"),
    "qemu-pcie-pci-bridge": ("qemu-q35", "02:01.0", "behind QEMU's pcie-pci-bridge"),
}
SUFFIX = {"text": "txt", "json": "json"}


def load(name: str) -> HostTopology:
    return snapshot.load(HOSTS / f"{name}.json")


def addr(text: str) -> PciAddress:
    return PciAddress.parse(text)


def why(host: HostTopology, address: str) -> Explanation:
    return explain(host, addr(address))


def change(host: HostTopology, address: str, **fields: object) -> HostTopology:
    """The host with one function's fields replaced (the kernel's groups stay as they were)."""
    functions = [replace(f, **fields) if f.address == addr(address) else f for f in host.functions]  # type: ignore[arg-type]
    return HostTopology.build(host.iommu, functions, host.groups, host.source)


def steps(e: Explanation) -> str:
    return "\n".join(s.text for s in e.steps)


def kernel_groups(host: HostTopology) -> list[tuple[PciAddress, ...]]:
    return sorted(g.members for g in host.groups)


# ------------------------------------------------------------------------------------------ the sample hosts


def _booted_with_override(host: HostTopology) -> bool:
    return any(f.code is UseCode.ACS_OVERRIDE for f in host.findings)


@pytest.mark.parametrize("path", SAMPLE_HOSTS, ids=[p.stem for p in SAMPLE_HOSTS])
def test_every_group_of_every_sample_host_is_the_kernels(path: Path) -> None:
    """On every sample the model forms exactly the kernel's groups, and explain agrees for every function. No
    sample needs an exception: where the kernel is known to group by rules the model lacks, it would be here."""
    host = snapshot.load(path)
    if not host.iommu:
        pytest.skip("no IOMMU groups to compare with (see test_vtd_off_predicts_what_vtd_on_forms)")
    if _booted_with_override(host):
        # The one exception by design: groups that lie (issue 11). The model must see through them.
        assert predicted_groups(host) != kernel_groups(host)
        return
    assert predicted_groups(host) == kernel_groups(host)
    for group in host.groups:
        for member in group.members:
            e = explain(host, member)
            assert (e.agreement, e.predicted, e.difference) == (Prediction.SAME, group.members, None), member


def test_samples_know_their_config_space() -> None:
    """The samples carry config-space facts (cases.toml says which were read and which inferred from the groups
    posted): the agreement above rests on them, not on inference from the very groups it is compared with."""
    for path in SAMPLE_HOSTS:
        assert all(f.capabilities_read for f in snapshot.load(path).functions), path.name


def test_vtd_off_predicts_what_vtd_on_forms() -> None:
    """The same machine without and with VT-d: the groups predicted with the IOMMU off are the ones the kernel
    formed with it on, plus the iGPU (igfx_off keeps it out of every group there; alone by the RCiEP quirk)."""
    off, on = load("desktop-vtd-off"), load("desktop-gpu")
    igpu = addr("00:02.0")
    assert sorted([*kernel_groups(on), (igpu,)]) == predicted_groups(off)
    e = why(off, "01:00.0")
    assert e.agreement is Prediction.NO_IOMMU
    assert e.predicted == (addr("00:01.0"), addr("01:00.0"), addr("01:00.1"))
    assert [s.kind for s in e.splits] == [SplitKind.ENABLE_IOMMU]


def test_a_device_without_a_group() -> None:
    e = why(load("desktop-gpu"), "00:02.0")
    assert (e.agreement, e.kernel_group, e.kernel_members) == (Prediction.NO_GROUP, None, ())
    assert e.predicted == (addr("00:02.0"),)
    assert [s.kind for s in e.splits] == [SplitKind.ENABLE_IOMMU]


def strip_capabilities(host: HostTopology) -> HostTopology:
    """The host as a capture without root sees it: nothing past 64 bytes of config space."""
    blind = [replace(f, capabilities_read=False, pcie_type=None, acs_cap=None, acs_ctrl=None) for f in host.functions]
    return HostTopology.build(host.iommu, blind, host.groups, host.source)


@pytest.mark.parametrize("path", SAMPLE_HOSTS, ids=[p.stem for p in SAMPLE_HOSTS])
def test_unknown_acs_is_inferred_from_the_kernels_groups(path: Path) -> None:
    host = strip_capabilities(snapshot.load(path))
    if not host.iommu:
        pytest.skip("nothing to infer from without groups (see test_unknown_acs_without_an_iommu_is_assumed)")
    if _booted_with_override(snapshot.load(path)):
        pytest.skip("inferring ACS from groups that lie infers the lie (see the test above)")
    assert predicted_groups(host) == kernel_groups(host)
    for func in host.functions:
        if func.iommu_group is not None:
            assert why(host, str(func.address)).agreement is Prediction.SAME


def test_unknown_acs_is_said_plainly() -> None:
    host = strip_capabilities(load("desktop-gpu"))
    e = why(host, "01:00.0")
    assert e.unknown_acs == (addr("00:01.0"), addr("01:00.0"), addr("01:00.1"))
    assert "ACS unknown (config space not read): the kernel put 0000:01:00.0 in its group, so it does not isolate" in (
        steps(e)
    )
    assert "ACS was not read for" in to_text(e)
    port = why(host, "03:00.0")  # behind 00:1c.4: the kernel gave it a group of its own
    assert "a group of its own, so it isolates" in steps(port)
    assert "Sunrise/Union Point PCH root port ID" in steps(port)  # the quirk that may apply, named
    assert any(s.kind is SplitKind.NOTHING_TO_SPLIT for s in port.splits)


def test_unknown_acs_without_an_iommu_is_assumed() -> None:
    host = strip_capabilities(load("desktop-vtd-off"))
    e = why(host, "03:00.0")
    assert "assumed not to isolate" in steps(e)
    assert addr("00:1c.4") in e.predicted  # the safe guess: the larger group


# ------------------------------------------------------------------------ each rule matters (tests can fail)


def test_a_port_with_acs_would_keep_the_gpu_apart() -> None:
    host = change(load("desktop-gpu"), "00:01.0", acs_cap=0x001F, acs_ctrl=0x001D)
    e = why(host, "01:00.0")
    assert e.agreement is Prediction.DIFFERENT
    assert e.predicted == (addr("01:00.0"), addr("01:00.1"))  # the functions still share: no ACS between them
    assert e.difference is not None
    assert "the kernel also put 0000:00:01.0 in it, which explain's rules keep apart" in e.difference
    assert "explain's model misses something here" in e.difference
    assert "But the kernel formed a different group" in to_text(e)


def test_acs_controls_that_are_off_do_not_isolate() -> None:
    host = change(load("server-sriov"), "3a:00.0", acs_ctrl=0x000D)  # UF off
    e = why(host, "3b:02.0")
    assert "UF not enabled: does not isolate" in steps(e)
    assert len(e.predicted) == 7 and e.agreement is Prediction.DIFFERENT  # the port, both PFs, four VFs
    enable = [s for s in e.splits if s.kind is SplitKind.ENABLE_ACS]
    assert len(enable) == 1 and enable[0].ports == (addr("3a:00.0"),)
    assert "config_acs=" in enable[0].text
    alone = why(change(load("laptop"), "00:1b.0", acs_ctrl=0x000D), "07:00.0")
    assert alone.predicted == (addr("00:1b.0"), addr("07:00.0"))  # joins the port: nothing of the host's to split
    assert [s.kind for s in alone.splits] == [SplitKind.NOTHING_TO_SPLIT]


def test_capabilities_a_port_does_not_implement_count_as_hard_wired() -> None:
    e = why(load("server-sriov"), "3b:00.1")
    assert "ACS capability 0x0000, control 0x0000: SV RR CR UF not implemented: counted as hard-wired" in steps(e)
    host = load("server-sriov")
    for pf in ("3b:00.0", "3b:00.1"):
        host = change(host, pf, acs_cap=None, acs_ctrl=None)
    without = why(host, "3b:00.1")
    assert without.predicted == (addr("3b:00.0"), addr("3b:00.1"))  # no capability at all: the PFs share


def test_the_sunrise_point_quirk_needs_the_capability() -> None:
    host = load("desktop-gpu")
    assert "Intel Sunrise Point ACS quirk treats it as isolating" in steps(why(host, "00:1c.4"))
    e = why(change(host, "00:1c.4", acs_cap=None, acs_ctrl=None), "03:00.0")
    assert e.predicted == (addr("00:1c.4"), addr("03:00.0"))
    assert e.agreement is Prediction.DIFFERENT


def test_the_intel_pch_quirk_goes_by_device_id() -> None:
    host = load("pci-bridge")
    assert "the kernel's Intel PCH ACS quirk treats it as isolating" in steps(why(host, "04:00.0"))
    e = why(change(host, "00:1c.3", device=0x8C97), "05:00.0")  # odd IDs are not in the 9-series list
    assert addr("00:1c.3") in e.predicted and e.agreement is Prediction.DIFFERENT


def test_the_intel_rciep_quirk_splits_integrated_functions() -> None:
    host = load("laptop")
    for function in ("00:14.0", "00:14.2", "00:14.3"):
        host = change(host, function, pcie_type=cs.PCIE_RC_INTEGRATED_ENDPOINT)
    e = why(host, "00:14.3")
    assert e.predicted == (addr("00:14.3"),) and e.agreement is Prediction.DIFFERENT
    assert "Intel RCiEP ACS quirk treats it as isolating" in steps(e)


def test_the_multifunction_quirk_keeps_the_i219_apart() -> None:
    host = load("desktop-gpu")
    assert why(host, "00:1f.6").predicted == (addr("00:1f.6"),)
    e = why(change(host, "00:1f.6", device=0x15B9), "00:1f.6")  # an ID the quirk does not list
    assert len(e.predicted) == 5 and e.agreement is Prediction.DIFFERENT


def test_a_dma_alias_holds_where_acs_would_separate() -> None:
    host = load("ricoh-laptop")
    for function in ("03:00.0", "03:00.1"):  # give both functions ACS: only the alias keeps them together
        host = change(host, function, acs_cap=0x0000, acs_ctrl=0x0000)
    e = why(host, "03:00.1")
    assert (e.agreement, e.predicted) == (Prediction.SAME, (addr("03:00.0"), addr("03:00.1")))
    assert "it DMAs with the requester ID of 0000:03:00.0 (quirk_dma_func0_alias)" in steps(e)
    assert [s.kind for s in e.splits] == [SplitKind.CANNOT_SPLIT]
    assert "neither an ACS setting nor pcie_acs_override" in e.splits[0].text
    other = why(change(host, "03:00.1", device=0xE833), "03:00.1")  # no quirk: the functions part
    assert other.predicted == (addr("03:00.1"),) and other.agreement is Prediction.DIFFERENT


def _host(*functions: PciFunction, iommu: bool = True) -> HostTopology:
    return make_topology(functions, iommu=iommu)


def _pcie(address: str, pcie_type: int | None, *, acs: tuple[int, int] | None = None, **kw: Any) -> PciFunction:
    func = make_function(address, **kw)
    cap, ctrl = acs if acs is not None else (None, None)
    return replace(func, capabilities_read=True, pcie_type=pcie_type, acs_cap=cap, acs_ctrl=ctrl)


ACS_ON = (0x001F, 0x001D)
PORT: dict[str, Any] = {"class_code": 0x060400, "header": Header.BRIDGE, "driver": "pcieport"}


def test_a_ghost_requester_is_named() -> None:
    """Marvell 88SE9123 DMAs as function 1, which some SKUs do not have."""
    host = _host(
        _pcie("00:1c.0", cs.PCIE_ROOT_PORT, acs=ACS_ON, group=1, **PORT),
        _pcie("02:00.0", cs.PCIE_LEGACY_ENDPOINT, vendor=0x1B4B, device=0x9123, group=2, parent="00:1c.0"),
    )
    e = why(host, "02:00.0")
    assert "1 devfn(s) on its bus where no function exists (a ghost requester)" in steps(e)
    assert e.agreement is Prediction.SAME


def test_a_plx_ntb_aliases_its_whole_bus() -> None:
    bus = [
        _pcie("00:00.0", None, group=0, class_code=0x060000),
        _pcie("00:05.0", cs.PCIE_RC_INTEGRATED_ENDPOINT, vendor=0x10B5, device=0x87B0, group=1),
        _pcie("00:07.0", cs.PCIE_RC_INTEGRATED_ENDPOINT, vendor=0x1AF4, device=0x1041, group=2),
    ]
    assert why(_host(*bus), "00:07.0").predicted == tuple(f.address for f in bus)


def test_a_function_above_zero_is_multifunction_whatever_its_header_says() -> None:
    """pci_scan_slot() marks every function > 0 multifunction: QEMU's second function has no such bit, yet the
    kernel (checked in the VM bed) puts both functions of an ACS-less device in one group."""
    host = _host(
        _pcie("00:08.0", cs.PCIE_ROOT_PORT, acs=ACS_ON, group=1, **PORT),
        _pcie("01:00.0", cs.PCIE_ENDPOINT, multifunction=True, group=2, parent="00:08.0"),
        _pcie("01:00.1", cs.PCIE_ENDPOINT, vendor=0x1AF4, device=0x1041, group=2, parent="00:08.0"),
    )
    assert why(host, "01:00.1").predicted == (addr("01:00.0"), addr("01:00.1"))


def test_pcie_switch_ports_group_as_the_kernel_does_today() -> None:
    """A single-function upstream port needs no ACS, so each downstream port without ACS gets a group of its own
    with what is below it (pci_acs_path_enabled at the upstream port holds). A 2025 rework of the kernel's rules
    would put both downstream ports and both endpoints in one group; explain follows the kernels in use."""
    host = _host(
        _pcie("00:01.0", cs.PCIE_ROOT_PORT, acs=ACS_ON, group=0, **PORT),
        _pcie("01:00.0", cs.PCIE_UPSTREAM_PORT, group=1, parent="00:01.0", **PORT),
        _pcie("02:00.0", cs.PCIE_DOWNSTREAM_PORT, group=2, parent="01:00.0", **PORT),
        _pcie("02:01.0", cs.PCIE_DOWNSTREAM_PORT, group=3, parent="01:00.0", **PORT),
        _pcie("03:00.0", cs.PCIE_ENDPOINT, group=2, parent="02:00.0"),
        _pcie("04:00.0", cs.PCIE_ENDPOINT, group=3, parent="02:01.0"),
    )
    assert predicted_groups(host) == kernel_groups(host)
    e = why(host, "03:00.0")
    assert "joins 0000:02:00.0's group" in steps(e)
    assert [s.kind for s in e.splits] == [SplitKind.NOTHING_TO_SPLIT]  # the rest is the port: nothing to split
    # A multifunction upstream port without ACS pulls everything below it together (the AMD chipset case).
    lump = change(host, "01:00.0", multifunction=True)
    assert len(predicted_groups(lump)) == 2


def test_conventional_bridges_alias_to_the_nearest_one() -> None:
    host = _host(
        _pcie("00:01.0", cs.PCIE_ROOT_PORT, acs=ACS_ON, group=0, **PORT),
        _pcie("01:00.0", cs.PCIE_TO_PCI_BRIDGE, group=1, parent="00:01.0", **PORT),
        _pcie("02:01.0", None, group=1, parent="01:00.0", **PORT),
        _pcie("03:01.0", None, group=1, parent="02:01.0"),
    )
    e = why(host, "03:01.0")
    assert "0000:02:01.0 [8086:1234] is a conventional PCI bridge" in steps(e)
    assert e.agreement is Prediction.SAME
    assert [s.kind for s in e.splits] == [SplitKind.CANNOT_SPLIT]


def test_other_slots_are_ports_that_isolate_all_the_way_up() -> None:
    e = why(load("amd-b450"), "18:00.0")
    slot = next(s for s in e.splits if s.kind is SplitKind.OTHER_SLOT)
    assert slot.ports == (addr("00:01.1"), addr("00:01.6"), addr("00:08.1"))
    assert "0000:00:01.6 (holds 0000:2e:00.0)" in slot.text
    override = next(s for s in e.splits if s.kind is SplitKind.ACS_OVERRIDE)
    assert "pcie_acs_override=downstream,multifunction" in override.text
    assert "peer-to-peer DMA between 0000:18:00.0 and" in override.text
    assert "no longer blocked by hardware" in override.text and "0000:15:00.1 (ahci)" in override.text
    firmware = [s.ports for s in e.splits if s.kind is SplitKind.FIRMWARE_ACS]
    assert firmware == [(addr("16:01.0"),), (addr("15:00.2"),)]


def test_a_gpu_behind_a_port_needs_no_split() -> None:
    """The usual desktop case: the group is the GPU's functions and the CPU's port, which VFIO accepts."""
    e = why(load("desktop-gpu"), "01:00.0")
    kinds = [s.kind for s in e.splits]
    assert kinds == [SplitKind.CANNOT_SPLIT, SplitKind.NOTHING_TO_SPLIT, SplitKind.ACS_OVERRIDE]
    assert "goes to a guest together with 0000:01:00.1" in e.splits[0].text
    assert "pcie_acs_override=multifunction" in e.splits[2].text


def test_an_address_the_host_lacks_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"0000:7f:00\.0 is not a PCI function of this host"):
        why(load("laptop"), "7f:00.0")


# ----------------------------------------------------------------------------------------- the quirk tables


def _func(vendor: int, device: int, pcie_type: int | None = cs.PCIE_ROOT_PORT, **kw: object) -> PciFunction:
    return replace(_pcie("00:1c.0", pcie_type, vendor=vendor, device=device), **kw)  # type: ignore[arg-type]


CTX = quirks.QuirkContext(iommu=True)


def test_quirk_tables_hold_the_kernels_ids() -> None:
    aliases = {(q.vendor, q.device) for q in quirks.DMA_ALIAS_QUIRKS}
    for ids in [(0x1180, 0xE832), (0x1180, 0xE476), (0x1B4B, 0x9230), (0x197B, 0x2392), (0x1C28, 0x0122)]:
        assert ids in aliases
    assert (0x8086, 0x2957) not in aliases  # the VCA rows skip 2957
    assert len(quirks.INTEL_PCH_ACS_IDS) == 16 * 4 + 12 * 2 + 8 + 15 + 8
    assert 0x1D11 not in quirks.INTEL_PCH_ACS_IDS and 0x8C91 not in quirks.INTEL_PCH_ACS_IDS
    assert {0xA110, 0xA11F, 0xA16A, 0xA2EE, 0x9D1B} <= quirks.INTEL_SPT_PCH_ACS_IDS
    rows = [(r.vendor, r.device, r.kind) for r in quirks.ACS_QUIRK_TABLE]
    assert len(rows) == len(set(rows))
    assert {r.kind for r in quirks.ACS_QUIRK_TABLE} == set(quirks.AcsQuirkKind)


def test_acs_quirks_answer_as_the_kernels_functions() -> None:
    answer = quirks.acs_quirk
    assert answer(_func(0x8086, 0x8C96), CTX) is not None  # Lynx Point PCH root port
    assert answer(_func(0x8086, 0x8C96, pcie_type=cs.PCIE_ENDPOINT), CTX) is None  # the quirk wants a root port
    unknown = answer(_func(0x8086, 0x8C96, capabilities_read=False, pcie_type=None), CTX)
    assert unknown is not None and unknown.isolates is None  # cannot tell without the port type
    # Zhaoxin and Wangxun answer "no" for IDs they do not list, whatever the capability says.
    no = answer(_func(0x1D17, 0x0800, acs_cap=0x1F, acs_ctrl=0x1D), CTX)
    assert no is not None and no.isolates is False
    yes = answer(_func(0x1D17, 0x0715), CTX)
    assert yes is not None and yes.isolates is True
    wangxun = answer(_func(0x8088, 0x0999, pcie_type=cs.PCIE_ENDPOINT), CTX)
    assert wangxun is not None and wangxun.isolates is False
    # AMD southbridge: multifunction devices on the root bus, with an IOMMU.
    sb = _func(0x1002, 0x4385, pcie_type=None, multifunction=True)
    assert answer(sb, CTX) is not None
    assert answer(sb, quirks.QuirkContext(iommu=False)) is None
    assert answer(replace(sb, parent=addr("00:14.4")), CTX) is None
    # The multifunction list comes before the Intel RCiEP row; Cavium A026 falls through to its own row.
    assert answer(_func(0x8086, 0x15B8, pcie_type=None), CTX) is not None
    cavium = answer(_func(0x177D, 0xA026, pcie_type=cs.PCIE_ENDPOINT), CTX)
    assert cavium is not None and cavium.kind is quirks.AcsQuirkKind.MF_ENDPOINT


# ---------------------------------------------------------------------------------------------- golden files


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code) if isinstance(exc.code, int) else -1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name: str, fmt: str, capsys: pytest.CaptureFixture[str], regen_golden: bool) -> None:
    host, address, _what = GOLDEN[name]
    code, out, err = _cli(capsys, "explain", address, "--host", str(HOSTS / f"{host}.json"), "--format", fmt)
    assert (code, err) == (0, "")
    golden = EXPECTED / f"explain-{name}.{SUFFIX[fmt]}"
    if regen_golden:
        golden.write_text(out)
        return
    if not golden.exists():
        pytest.fail(f"{golden.relative_to(SAMPLES)} is missing: run pytest tests/unit/test_explain.py --regen-golden")
    expected = golden.read_text()
    if out != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True), out.splitlines(keepends=True), f"expected/{golden.name}", "explain"
        )
        pytest.fail("output differs from the golden file:\n" + "".join(diff), pytrace=False)


def test_no_orphan_golden_files() -> None:
    used = {EXPECTED / f"explain-{name}.{suffix}" for name in GOLDEN for suffix in SUFFIX.values()}
    assert set(EXPECTED.glob("explain-*")) == used


def test_golden_json_is_the_explanation() -> None:
    doc = json.loads((EXPECTED / "explain-ricoh-alias.json").read_text())
    e = why(load("ricoh-laptop"), "03:00.1")
    assert doc == json.loads(json.dumps(to_json(e)))
    assert doc["agreement"] == "same" and doc["split"][0]["kind"] == "cannot-split"


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_on_a_sysfs_tree_matches_the_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The simulated kernel writes the whole config space, so read_topology recovers the ACS facts."""
    path = HOSTS / "amd-b450.json"
    SimKernel.materialize(tmp_path / "sys", snapshot.load(path))
    for fmt in ("text", "json"):
        from_tree = _cli(capsys, "explain", "0000:17:00.0", "--sysfs", str(tmp_path / "sys"), "--format", fmt)
        from_file = _cli(capsys, "explain", "0000:17:00.0", "--host", str(path), "--format", fmt)
        assert from_tree == from_file
        assert from_tree[0] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "7f:00.0", "--host", str(HOSTS / "laptop.json")], "is not a PCI function of this host"),
        (["explain", "nonsense", "--host", str(HOSTS / "laptop.json")], "is not a PCI address"),
        (["explain", "00:1f.0", "--host", str(HOSTS / "laptop.json"), "--sysfs", "/sys"], "not allowed with"),
        (["explain", "00:1f.0", "--sysfs", "/nonexistent"], "does not look like sysfs"),
    ],
    ids=["absent", "malformed", "host-and-sysfs", "not-sysfs"],
)
def test_cli_input_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("isogroup: ") and err.count("\n") == 1 and message in err, err


# --------------------------------------------------------------------- the simulated kernel's config space


def test_the_simulated_kernel_writes_what_root_reads(tmp_path: Path) -> None:
    """64 bytes when the topology does not know the capabilities, 256 for conventional PCI, 4096 for PCIe with the
    PCIe capability and the ACS extended capability where configspace.parse_capabilities finds them."""
    host = load("amd-b450")
    sim = SimKernel.materialize(tmp_path / "sys", host)
    for address, size, facts in [
        ("00:18.0", 256, (None, None, None)),
        ("00:01.2", 4096, (cs.PCIE_ROOT_PORT, 0x005F, 0x001D)),
        ("16:00.0", 4096, (cs.PCIE_DOWNSTREAM_PORT, None, None)),
    ]:
        config = (sim.root / f"bus/pci/devices/{addr(address)}/config").read_bytes()
        assert len(config) == size
        parsed = cs.parse_capabilities(config)
        assert parsed is not None and (parsed.pcie_type, parsed.acs_cap, parsed.acs_ctrl) == facts
    blind = SimKernel.materialize(tmp_path / "blind", strip_capabilities(host))
    assert len((blind.root / f"bus/pci/devices/{addr('00:01.2')}/config").read_bytes()) == 64


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"capabilities_read": False, "pcie_type": 4}, "capabilities_read is false"),
        ({"pcie_type": None, "acs_cap": 0x1F, "acs_ctrl": 0}, "conventional PCI function has no ACS"),
        ({"acs_cap": None, "acs_ctrl": 0x1D}, "ACS control word without an ACS capability"),
        ({"pcie_type": 16}, "does not fit in 4 bits"),
        ({"acs_cap": 0x10000}, "ACS registers are 16 bits"),
    ],
    ids=["unread-but-set", "conventional-acs", "ctrl-without-cap", "type-too-big", "cap-too-big"],
)
def test_the_simulated_kernel_refuses_config_space_no_device_has(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    host = change(load("qemu-q35"), "00:08.0", **fields)
    with pytest.raises(ValueError, match=message):
        SimKernel.materialize(tmp_path / "sys", host)
