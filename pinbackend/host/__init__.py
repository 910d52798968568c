"""Effects on this host: core leases, pinning threads, capping thread pools, applying slots."""
