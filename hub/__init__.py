"""The hub side of Esker: configuration, services, allocation, CLI."""
