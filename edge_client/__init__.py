"""fedge device side: protocol, runtime, trainer, codec, secure aggregation, DP, agent."""
