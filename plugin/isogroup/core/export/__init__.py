"""`isogroup inventory`'s renderings, one small module per consumer; each a pure function of an Inventory."""
