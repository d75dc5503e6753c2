"""fedge tools: the `fedge` command, provisioning, device bundles and benchmarks."""
