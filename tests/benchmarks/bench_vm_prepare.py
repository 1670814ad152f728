"""Benchmark for isogroup's prepare on a real kernel: boots the bed's VM (Debian's kernel under QEMU TCG with an
emulated Intel IOMMU, the topology of tests/vm/test_vm_isogroup.py) and runs only the `prepare_overhead` scenario
of tests/vm/guest_isogroup_scenarios.py: a group with seven siblings to move, prepared by

  * the installed hook, executed as libvirt executes it (`HOOK NAME prepare begin -`, XML on stdin), end to end;
  * `transaction.prepare` in the guest script's own process;
  * a plain shell loop doing the same sysfs writes (driver_override, unbind, drivers_probe per device);

with everything restored between runs, medians of 5 runs after a warm-up. Also the bare interpreter start
(`python -I -c pass`), the slow path's imports (`python -I -c 'import isogroup.hook.run'`) and the hook's fast
path (a domain without hostdevs): hook exec ~ imports + in-process prepare.

Run (root, after scripts/setup.sh --test): .venv/bin/python tests/benchmarks/bench_vm_prepare.py
Target: prepare at most 1.2 x the shell loop. Prints figures; asserts nothing. The same figures are printed by
tests/vm/test_vm_isogroup.py::test_prepare_overhead_figures in every full test run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, when run as a script
from vm.bed import run_in_vm, unavailable_reason
from vm.test_vm_isogroup import GUEST_SCRIPT, TOPOLOGY


def main() -> int:
    reason = unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}")
        return 1
    result = run_in_vm(TOPOLOGY, GUEST_SCRIPT, ["install_hook", "prepare_overhead"], timeout=600)
    figures = (result.results or {}).get("meta", {}).get("prepare_overhead")
    if figures is None:
        print(result.scenario_problem("prepare_overhead") or result.describe())
        return 1
    ms = figures["median_ms"]
    n = figures["devices_moved"]
    print(f"real kernel (TCG), {n} devices moved, medians of {figures['repeat']} runs:")
    print(f"  shell loop (same sysfs writes)   {ms['shell_loop']:8.1f} ms")
    print(f"  transaction.prepare in-process   {ms['in_process_prepare']:8.1f} ms")
    print(f"  hook executed, end to end        {ms['hook_exec_prepare']:8.1f} ms")
    print(f"  python -I -c pass                {ms['python_startup']:8.1f} ms")
    print(f"  python -I -c 'import isogroup.hook.run' {ms['hook_imports']:5.1f} ms")
    print(f"  hook fast path (no hostdev)      {ms['hook_fast_path']:8.1f} ms")
    print(f"  ratio in-process / shell: {figures['ratio_in_process_vs_shell']}  (target <= 1.2)")
    print(f"  ratio hook exec / shell:  {figures['ratio_hook_exec_vs_shell']}")
    print(f"VM: boot {result.boot_seconds} s, wall {result.wall_seconds} s")
    print(json.dumps(figures["samples_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
