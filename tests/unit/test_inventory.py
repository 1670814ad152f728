"""`isogroup inventory`: the judgement (core.inventory, which is the planner's) and each consumer's rendering
checked against that consumer's documented grammar, cited per test. nova is checked by nova itself in
test_nova_devspec.py."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from fakes.hostfixtures import AUDIO, GPU, NIC, SATA, desktop
from isogroup.cli.main import main
from isogroup.core.address import PciAddress
from isogroup.core.export import kubevirt, nfd, nova, proxmox
from isogroup.core.inventory import Inventory, judge
from isogroup.core.model import Finding, HostTopology, UseCode
from isogroup.core.policy import Policy, Selector
from testpaths import SAMPLES

IGB = PciAddress.parse("0000:03:00.1")
EXPECTED = SAMPLES / "expected"


def probed(host: HostTopology, *findings: Finding) -> HostTopology:
    return replace(host, probed=True, findings=findings)


def reasons(inv: Inventory) -> dict[int, tuple[str, ...]]:
    return {g.group: g.reasons for g in inv.groups}


def test_a_probed_host_offers_every_clean_group_one_device_each() -> None:
    inv = judge(probed(desktop()), "n1")
    assert [g.group for g in inv.assignable] == [1, 2, 3]
    offered = {g.group: g.requestable.address for g in inv.assignable if g.requestable}
    assert offered == {1: GPU, 2: NIC, 3: SATA}  # the GPU, not its audio/USB/UCSI companions
    (g1,) = (g for g in inv.groups if g.group == 1)
    assert [m.action.value for m in g1.members] == ["keep", "libvirt", "move", "move", "move"]


def test_host_use_refuses_and_an_unknown_finding_fails_closed() -> None:
    host = probed(
        desktop(),
        Finding(IGB, UseCode.NETWORK_ROUTE, "eno1", "0000:03:00.1 (igb) carries the default route"),
        Finding(NIC, UseCode.NETWORK_UNKNOWN, "enp2s0", "0000:02:00.0: could not read its routes"),
    )
    assert reasons(judge(host, "n1")) == {1: (), 2: ("host-in-use",), 3: ("host-in-use",)}


def test_without_probes_only_groups_that_take_no_device_from_a_host_driver_are_offered() -> None:
    host = desktop()
    assert not host.probed
    on_vfio = replace(
        host, functions=tuple(replace(f, driver="vfio-pci") if f.address == NIC else f for f in host.functions)
    )
    inv = judge(on_vfio, "n1")
    assert reasons(inv) == {1: ("host-use-unknown",), 2: (), 3: ("host-use-unknown",)}
    (g2,) = inv.assignable
    assert g2.ready and nova.spec(g2)["managed"] == "no"  # already bound: libvirt leaves it there
    assert kubevirt.to_bind(inv) == []


def test_a_claimed_group_is_not_offered_but_a_reservation_is() -> None:
    host = probed(desktop())
    assert reasons(judge(host, "n1", {1: "htpc"}))[1] == ("group-claimed",)
    inv = judge(host, "n1", {1: "reservation:kubevirt"}, reservations={1: "reservation:kubevirt"})
    (g1,) = (g for g in inv.groups if g.group == 1)
    assert g1.assignable and g1.reserved and g1.holder == "reservation:kubevirt"


def test_the_policy_decides_too() -> None:
    policy = Policy(deny=Selector(classes=frozenset({"0106"})), source="test")
    assert reasons(judge(probed(desktop()), "n1", policy=policy))[3] == ("policy-denied",)


# ------------------------------------------------------------------------------------------------ KubeVirt

_SELECTOR = re.compile(r"[0-9a-f]{4}:[0-9a-f]{4}")
# An extended resource name: a DNS-subdomain prefix, '/', a qualified name (Kubernetes' IsQualifiedName).
_RESOURCE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def test_kubevirt_entries_have_the_api_fields_and_types() -> None:
    """kubevirt/client-python docs/V1PciHostDevice.md (generated from KubeVirt's API): pciVendorSelector (str,
    required), resourceName (str, required), externalResourceProvider (bool, optional). virt-handler compares the
    selector with the lower-cased PCI_ID of sysfs uevent (pkg/virt-handler/device-manager/device_controller.go)."""
    host = probed(desktop())
    entries = kubevirt.entries(judge(host, "n1"))
    assert entries
    for e in entries:
        assert set(e) == {"pciVendorSelector", "resourceName", "externalResourceProvider"}
        assert isinstance(e["pciVendorSelector"], str) and _SELECTOR.fullmatch(e["pciVendorSelector"])
        assert isinstance(e["resourceName"], str) and _RESOURCE.fullmatch(e["resourceName"])
        assert e["externalResourceProvider"] is False
    assert len({e["pciVendorSelector"] for e in entries}) == len(entries)  # KubeVirt's list is a map by selector


def test_kubevirt_warns_when_a_selector_also_matches_a_device_outside_the_whole_groups() -> None:
    """The device plugin selects by vendor:device only (pkg/virt-handler/device-manager/pci_device.go)."""
    host = desktop()
    twin = replace(host.by_address[NIC], address=PciAddress.parse("0000:04:00.0"), iommu_group=4)
    on_vfio = replace(host.by_address[NIC], driver="vfio-pci")
    funcs = [on_vfio if f.address == NIC else f for f in host.functions] + [twin]
    groups = [*host.groups, replace(host.groups[0], number=4, members=(twin.address,))]
    text = kubevirt.render(judge(HostTopology.build(True, funcs, groups), "n1"))
    assert "# warning: 0000:04:00.0 (8086:10d3, group 4) matches a selector below" in text


# ------------------------------------------------------------------------------------------------ Proxmox

# proxmox/pve-guest-common src/PVE/Mapping/PCI.pm: $PCI_RE, the `id`/`subsystem-id` patterns, $map_fmt's keys,
# the section header `^(\S+)\s*$` checked by pve_verify_configid; SectionConfig writes `\t<key> <value>` lines.
_PCI_RE = r"[a-f0-9]{4,}:[a-f0-9]{2}:[a-f0-9]{2}(?:\.[a-f0-9])?"
_ID = re.compile(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}")
_MAP_KEYS = {"node", "id", "subsystem-id", "path", "iommugroup", "description"}
_CONFIGID = re.compile(r"[a-z][a-z0-9_-]+", re.IGNORECASE)


@pytest.mark.parametrize("name", ["amd-b450-probed", "server-sriov"])
def test_proxmox_mappings_follow_pve_mapping_pci(name: str) -> None:
    text = (EXPECTED / f"inventory-{name}.pci.cfg").read_text()
    inv = json.loads((EXPECTED / f"inventory-{name}.json").read_text())
    group_of = {m["address"]: g["group"] for g in inv["groups"] for m in g["members"]}
    sections = [s for s in text.split("\n\n") if s.strip()]
    assert len(sections) >= 1
    for section in sections:
        header, *lines = section.rstrip("\n").split("\n")
        assert re.fullmatch(r"\S+\s*", header) and _CONFIGID.fullmatch(header)
        props = {}
        for line in lines:
            key, _, value = line.removeprefix("\t").partition(" ")
            assert line.startswith("\t") and key in {"description", "mdev", "map"}
            assert len(value) <= 4096
            props[key] = value
        fields = dict(kv.split("=", 1) for kv in props["map"].split(","))
        assert set(fields) <= _MAP_KEYS and {"node", "path", "id"} <= set(fields)
        assert re.fullmatch(f"(?:{_PCI_RE};)*{_PCI_RE}", fields["path"])
        assert _ID.fullmatch(fields["id"]) and _ID.fullmatch(fields["subsystem-id"])
        # assert_valid dies without iommugroup when sysfs has one, and checks it on the first path only.
        assert int(fields["iommugroup"]) == group_of[fields["path"].split(";")[0]]


def test_proxmox_leaves_out_what_it_cannot_check_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """A snapshot from before subsystem IDs were recorded: Proxmox would refuse the mapping (PCI.pm: "no
    'subsystem-id' for device"), so it is left out, one line on stderr per group."""
    code = main(["inventory", "--host", str(SAMPLES / "hosts" / "amd-b450.json"), "--format", "proxmox"])
    out, err = capsys.readouterr()
    assert (code, out) == (0, "")
    assert err == ""  # amd-b450 is unprobed: nothing offered, nothing left out
    host = probed(desktop())
    assert proxmox.render(judge(host, "n1")) == ""
    assert [g.group for g in proxmox.mappings(judge(host, "n1"))[1]] == [1, 2, 3]


# ----------------------------------------------------------------------------------------------------- NFD

# Kubernetes label rules (apimachinery validation IsQualifiedName / IsValidLabelValue), which NFD applies to the
# local source's features (kubernetes-sigs/node-feature-discovery source/local/local.go; docs/usage/
# customization-guide.md: `# +no-label`, namespaces under feature.node.kubernetes.io allowed by default).
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.mark.parametrize("name", ["amd-b450-probed", "server-sriov", "desktop-gpu-held"])
def test_nfd_feature_file_follows_the_local_source_grammar(name: str) -> None:
    text = (EXPECTED / f"inventory-{name}.nfd").read_text()
    no_label = False
    labels = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line == "# +no-label":
            no_label = True
            continue
        if not line or line.startswith("#"):
            assert not line.startswith("# +"), "an unknown directive"
            continue
        key, _, value = line.partition("=")
        if not no_label:
            prefix, _, label = key.partition("/")
            assert _PREFIX.fullmatch(prefix) and len(prefix) <= 253
            assert prefix.endswith("feature.node.kubernetes.io")  # allowed without -extra-label-ns
            assert _NAME.fullmatch(label) and len(label) <= 63
            assert value == "" or (_NAME.fullmatch(value) and len(value) <= 63)
            labels[label] = value
        no_label = False
    assert len(text.encode()) <= 65536  # MaxFeatureFileSize
    assert labels["iommu"] == "true"
    inv = json.loads((EXPECTED / f"inventory-{name}.json").read_text())
    assert int(labels["whole-groups"]) == len(inv["assignable"])


def test_nfd_says_when_there_is_no_iommu() -> None:
    inv = judge(HostTopology.build(False, [], []), "n1")
    assert nfd.features(inv)[:2] == [
        (f"{nfd.NAMESPACE}/iommu", "false", True),
        (f"{nfd.NAMESPACE}/whole-groups", "0", True),
    ]


# ---------------------------------------------------------------------------------------------- the command


def test_inventory_of_a_sysfs_tree_reads_subsystem_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the simulated kernel's sysfs (subsystem_vendor/subsystem_device), not a snapshot."""
    from fakes.simkernel import SimKernel

    host = desktop()
    host = replace(host, functions=tuple(replace(f, subsystem=(0x1043, 0x8520)) for f in host.functions))
    SimKernel.materialize(tmp_path / "sys", host)
    assert main(["inventory", "--sysfs", str(tmp_path / "sys"), "--node", "n1", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    subsystems = {m["address"]: m["subsystem"] for g in doc["groups"] for m in g["members"]}
    assert subsystems[str(AUDIO)] == "1043:8520"
    assert doc["probed"] is False and doc["assignable"] == []  # a tree without --proc: fails closed


def test_inventory_refuses_a_bad_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["inventory", "--host", str(SAMPLES / "hosts" / "laptop.json"), "--format", "yaml"])
    assert exit_.value.code == 2
