"""Layer 2, the local system: accounts, cgroups, scratch, GPUs, environments and ports."""
