"""Layer 1, the pure core: the config schema and loader, the catalog, the launch plan and what each service contributes to it."""
