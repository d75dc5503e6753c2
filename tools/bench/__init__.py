"""Benchmarks: each module prints a rich table with the command that made it and writes JSON."""

# edge_client imports in a cycle (identity -> protocol -> ... -> secagg.client -> identity), so
# importing identity before protocol fails. The benchmarks reach identity through firmware_sim
# and secagg in whatever order their imports sort; load protocol first so every order works.
# Remove once edge_client breaks the cycle.
import fedge.edge_client.protocol  # noqa: F401
