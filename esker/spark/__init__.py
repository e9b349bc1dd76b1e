"""Layer 2, the embedded Spark standalone cluster: service commands and the master/worker runner."""
