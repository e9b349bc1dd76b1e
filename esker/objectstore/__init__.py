"""Object storage: names and policies (pure), the RGW Admin Ops and S3 clients, the single-node Ceph, and the per-user identity service."""
