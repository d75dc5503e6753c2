"""Device-side differential privacy: spec, clipping, integer noise, distributed-DP encoding."""

from fedge.edge_client.privacy.clipping import ClippedUpdate, clip_update, l2_norm
from fedge.edge_client.privacy.ddp_params import (
    DistributedDPParams,
    check_wraparound,
    select_distributed_params,
    wraparound_sigmas,
)
from fedge.edge_client.privacy.distributed import encode_distributed
from fedge.edge_client.privacy.sampling import discrete_gaussian, discrete_laplace, skellam
from fedge.edge_client.privacy.spec import (
    AccountingMethod,
    DistributedNoise,
    DPMode,
    DPSpec,
    format_dp_spec,
    parse_dp_spec,
)

__all__ = [
    "AccountingMethod",
    "ClippedUpdate",
    "DPMode",
    "DPSpec",
    "DistributedDPParams",
    "DistributedNoise",
    "check_wraparound",
    "clip_update",
    "discrete_gaussian",
    "discrete_laplace",
    "encode_distributed",
    "format_dp_spec",
    "l2_norm",
    "parse_dp_spec",
    "select_distributed_params",
    "skellam",
    "wraparound_sigmas",
]
