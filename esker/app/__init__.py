"""Layer 4, the hub application: esker.yaml mapped onto JupyterHub traitlets, and the installation facts it needs."""
