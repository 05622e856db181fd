"""A stand-in for oxwhirl's ``smac`` package (tests only): no StarCraft II, the same public API."""
