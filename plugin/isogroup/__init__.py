"""isogroup: give a guest whole IOMMU groups, safely, and put them back.

This module stays empty on purpose: the hook's fast path imports the package, and every import here would be
paid by every domain start on the host, with or without PCI passthrough.
"""

__version__ = "0.1.0"
