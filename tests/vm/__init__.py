"""Real-kernel test bed: boots Debian's kernel under QEMU (TCG) with an emulated Intel IOMMU and a PCI topology
described as data, runs a Python script inside it against the host's root filesystem, and returns its results.

Host side: `topology` (the data model and QEMU arguments), `initramfs` (the boot image), `bed` (`run_in_vm`).
Guest side: `guest_lib` (sysfs, drivers, VFIO ioctls, scenario results), `guest_libvirt` (libvirtd and virsh).
See tests/vm/README.md.
"""
