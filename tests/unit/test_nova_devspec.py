"""`isogroup inventory --format nova`, read by OpenStack nova's own code, not ours.

nova is not a dependency of isogroup: `scripts/setup.sh --test` installs it (pinned, nova 34.0.0) into its own
venv, `.cache/nova-venv`, and each test runs nova there in a subprocess. The fragment is loaded as nova-compute
loads nova.conf (oslo.config, `nova.conf.CONF`), its `[pci] device_spec` values go through
`nova.pci.whitelist.Whitelist` -> `nova.pci.devspec.PciDeviceSpec` (openstack/nova: nova/pci/whitelist.py,
nova/pci/devspec.py), and the tags through the Placement translator's `get_resource_class` / `get_traits`
(nova/compute/pci_placement_translator.py), which must keep our names as they are. The alias the comment
suggests is checked by nova's alias parser (nova/pci/request.py, `get_alias_from_config`).

Without the venv the tests skip, except under CI=true, where a missing venv fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from isogroup.cli.main import main
from testpaths import ROOT, SAMPLES

NOVA_PY = ROOT / ".cache" / "nova-venv" / "bin" / "python"

# Runs inside nova's venv: argv[1] a nova.conf, argv[2] an extra [pci] alias value (or ""). Prints one JSON
# document: every spec as nova normalised it, with its Placement resource class and traits.
_READER = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")  # eventlet's deprecation notice on import
import nova.conf
from nova import exception
from nova.compute import pci_placement_translator as placement
from nova.pci import request, whitelist
CONF = nova.conf.CONF
CONF(["--config-file", sys.argv[1]], project="nova")
out = {"version": __import__("nova.version", fromlist=["x"]).version_info.version_string(), "specs": []}
try:
    wl = whitelist.Whitelist(CONF.pci.device_spec)
except exception.NovaException as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
for spec in wl.specs:
    tags = spec.get_tags()
    a = spec.address.pci_address_spec
    out["specs"].append({
        "vendor_id": spec.vendor_id, "product_id": spec.product_id,
        "address": f"{a.domain}:{a.bus}:{a.slot}.{a.func}", "tags": tags,
        "rc": placement.get_resource_class(tags.get("resource_class"), spec.vendor_id, spec.product_id),
        "traits": sorted(placement.get_traits(tags.get("traits", ""))),
    })
if sys.argv[2]:
    CONF.set_override("alias", [sys.argv[2]], group="pci")
    out["alias"] = {k: [v[0], v[1]] for k, v in request.get_alias_from_config().items()}
print(json.dumps(out))
"""


def _nova() -> Path:
    if not NOVA_PY.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{NOVA_PY} is missing: CI must run scripts/setup.sh --test, which installs nova for this test")
        pytest.skip("nova's venv is not installed (scripts/setup.sh --test)")
    return NOVA_PY


def _read_with_nova(conf: str, tmp_path: Path, alias: str = "") -> dict[str, object]:
    path = tmp_path / "nova.conf"
    path.write_text(conf)
    done = subprocess.run(
        [str(_nova()), "-c", _READER, str(path), alias], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _inventory(capsys: pytest.CaptureFixture[str], host: str, fmt: str) -> str:
    assert main(["inventory", "--host", str(SAMPLES / "hosts" / host), "--format", fmt]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("host", ["amd-b450-probed.json", "server-sriov.json"])
def test_nova_reads_every_device_spec_as_we_meant_it(
    host: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    inventory = json.loads(_inventory(capsys, host, "json"))
    fragment = _inventory(capsys, host, "nova")
    result = _read_with_nova(fragment, tmp_path)
    assert "error" not in result, result
    offered = [next(m for m in g["members"] if m["requestable"]) for g in inventory["groups"] if g["assignable"]]
    assert offered, "the sample host offers something"
    specs = result["specs"]
    assert isinstance(specs, list)
    assert [s["address"] for s in specs] == [m["address"] for m in offered]
    for spec, member in zip(specs, offered, strict=True):
        assert (spec["vendor_id"], spec["product_id"]) == (member["vendor"], member["device"])
        # nova stores `managed` as "true"/"false" after its strict bool parse: ours said yes for a device on a
        # host driver (libvirt detaches it), no for one already on vfio-pci.
        assert spec["tags"]["managed"] == ("false" if member["ready"] else "true")
        assert "physical_network" not in spec["tags"]  # such devices are never reported to Placement
        # Placement keeps our names: nothing re-normalised, no stray CUSTOM__ from a space.
        assert spec["rc"] == f"CUSTOM_ISOGROUP_{member['vendor'].upper()}_{member['device'].upper()}"
        assert spec["traits"] == ["CUSTOM_ISOGROUP_WHOLE_GROUP"]  # nova adds COMPUTE_MANAGED_PCI_DEVICE itself
    assert str(result["version"]).startswith("34.")


def test_nova_takes_the_suggested_alias(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The flavor alias for the RX 580 of amd-b450-probed, as the fragment's comment and CLUSTERS-SECTION.md write
    it: vendor_id and product_id too, which nova demands unless [filter_scheduler] pci_in_placement is on."""
    fragment = _inventory(capsys, "amd-b450-probed.json", "nova")
    alias = {
        "name": "isogroup-rx580",
        "device_type": "type-PCI",
        "vendor_id": "1002",
        "product_id": "67df",
        "resource_class": "CUSTOM_ISOGROUP_1002_67DF",
        "traits": "CUSTOM_ISOGROUP_WHOLE_GROUP",
    }
    template = next(line for line in fragment.splitlines() if line.startswith("# [pci] alias = "))
    assert set(json.loads(template.removeprefix("# [pci] alias = "))) == set(alias)
    result = _read_with_nova(fragment, tmp_path, json.dumps(alias))
    (policy, (spec,)) = result["alias"]["isogroup-rx580"]  # type: ignore[index]
    assert policy == "legacy"
    assert spec == {
        "dev_type": "type-PCI",
        "vendor_id": "1002",
        "product_id": "67df",
        "resource_class": "CUSTOM_ISOGROUP_1002_67DF",
        "traits": "CUSTOM_ISOGROUP_WHOLE_GROUP",
    }


def test_nova_refuses_what_we_must_never_write(tmp_path: Path) -> None:
    """The reader can fail: a slot out of range is refused by nova, so a broken fragment would not pass."""
    result = _read_with_nova('[pci]\ndevice_spec = {"address": "0000:41:20.0", "vendor_id": "10de"}\n', tmp_path)
    assert "greater than the maximum allowable value" in str(result.get("error"))
