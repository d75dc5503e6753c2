"""fedge fleet simulator: many real device agents, heterogeneous profiles, one real broker and server."""
