"""Parameters of distributed DP: quantization scale, per-device noise, norm bound, wrap check."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy.rotation import padded_length
from fedge.edge_client.privacy.rounding import rounded_norm_bound
from fedge.edge_client.privacy.spec import DEFAULT_BETA, MAX_BITS, MIN_BITS, DistributedNoise

DEFAULT_WRAP_PROBABILITY = 1e-6
# Quantization may inflate the L2 sensitivity by at most this factor before the parameters
# are refused (more would silently trade most of the noise for rounding error).
MAX_SENSITIVITY_INFLATION = 2.0
# Each device's noise stddev is capped at this many grid steps: numpy's Poisson sampler
# (Skellam) drifts from its variance for means above ~1e14, and finer grids gain nothing.
MAX_LOCAL_STDDEV = float(2**20)
# The selected scale meets the wrap bound with equality; allow float rounding on re-checks.
_RELATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class DistributedDPParams:
    """Everything a device needs to quantize and noise its update, and the server to decode.

    Integer-grid quantities (`local_stddev`, `norm_bound`) are in units of the grid step
    ``gamma = 1 / scale``. Send `to_dict()` in the task rather than recomputing on the
    device, so both sides use bit-identical numbers.

    Attributes
    ----------
    clip : L2 clip norm of each update (model units).
    noise_multiplier : target z; the noise of the sum has standard deviation z * clip.
    clients : devices whose updates are summed (the cohort size given to secure aggregation).
    dim : length of the flattened update.
    bits : ring width; values are reduced modulo 2**bits.
    noise : discrete Gaussian or Skellam.
    beta : conditional-rounding parameter (0: unconditional).
    scale : 1 / gamma, model units to grid steps.
    local_stddev : each device's noise standard deviation, in grid steps.
    norm_bound : L2 bound of a device's rounded vector (the sensitivity), in grid steps.
    wrap_sigmas : k such that k standard deviations of every sum coordinate fit the ring.
    """

    clip: float
    noise_multiplier: float
    clients: int
    dim: int
    bits: int
    noise: DistributedNoise
    beta: float
    scale: float
    local_stddev: float
    norm_bound: float
    wrap_sigmas: float

    @property
    def padded_dim(self) -> int:
        """Length of the rotated vector (next power of two of `dim`)."""
        return padded_length(self.dim)

    @property
    def modulus(self) -> int:
        """Size of the ring the noisy integers live in, 2**bits."""
        return 1 << self.bits

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (msgpack/JSON friendly) for the task message."""
        out = asdict(self)
        out["noise"] = self.noise.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistributedDPParams:
        """Rebuild and validate parameters received in a task.

        Raises
        ------
        PrivacyError
            On missing or unknown keys, wrong types or out-of-range values.
        """
        if not isinstance(data, dict):
            raise PrivacyError(f"distributed DP params must be a dict, got {type(data).__name__}")
        names = {item.name for item in fields(cls)}
        if set(data) != names:
            missing, extra = sorted(names - set(data)), sorted(set(data) - names)
            raise PrivacyError(f"distributed DP params: missing {missing}, unknown {extra}")
        try:
            noise = DistributedNoise(data["noise"])
        except ValueError:
            raise PrivacyError(f"distributed DP params: unknown noise {data['noise']!r}") from None
        values = {name: data[name] for name in names if name != "noise"}
        for name in ("clients", "dim", "bits"):
            if isinstance(values[name], bool) or not isinstance(values[name], int):
                raise PrivacyError(f"distributed DP params: {name} must be an integer")
        for name in (
            "clip",
            "noise_multiplier",
            "beta",
            "scale",
            "local_stddev",
            "norm_bound",
            "wrap_sigmas",
        ):
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PrivacyError(f"distributed DP params: {name} must be a number")
            values[name] = float(value)
        params = cls(noise=noise, **values)
        _check_params(params)
        return params


def select_distributed_params(
    clip: float,
    clients: int,
    dim: int,
    noise_multiplier: float,
    bits: int = 32,
    noise: DistributedNoise = DistributedNoise.DGAUSS,
    beta: float = DEFAULT_BETA,
    wrap_probability: float = DEFAULT_WRAP_PROBABILITY,
    max_clients: int | None = None,
) -> DistributedDPParams:
    """Choose the quantization scale and per-device noise for distributed DP.

    The sum's noise has variance (z * clip)^2, split as 1/clients per device. The scale is
    the largest one for which every coordinate of the noisy sum stays inside
    [-2**(bits-1), 2**(bits-1)) with probability >= 1 - `wrap_probability` (union bound
    over the padded coordinates with sub-Gaussian tails, i.e. a k-sigma bound with
    ``k = sqrt(2 ln(2 * padded_dim / wrap_probability))``). Per coordinate of the sum, in
    grid steps, the variance proxy is::

        V = scale^2 * clip^2 * (clients^2 / padded_dim + z^2) + clients / 4

    (rotated signal of `clients` aligned updates, the devices' noise, and rounding error),
    and the scale solves ``k^2 V = 2**(2(bits-1))``, capped so that each device's noise
    stays below 2**20 grid steps (sampler accuracy; the grid is then already very fine).
    With `max_clients` (over-selection: more devices may end up in the sum than the
    `clients` the noise is split over) the ring must hold the sum of `max_clients`
    vectors, each carrying 1/clients of the noise variance::

        V = scale^2 * clip^2 * (n^2 / padded_dim + z^2 * n / clients) + n / 4,  n = max_clients

    Raises
    ------
    PrivacyError
        If the ring is too small: the rounding error of `clients` devices alone would
        wrap, or quantization would inflate the sensitivity more than 2x (use more bits
        or fewer clients).
    """
    _check_inputs(clip, clients, dim, noise_multiplier, bits, beta, wrap_probability)
    most = clients if max_clients is None else max_clients
    if isinstance(most, bool) or not isinstance(most, int) or most < clients:
        raise PrivacyError(f"max_clients must be an integer >= clients={clients}, got {most!r}")
    padded = padded_length(dim)
    sigmas = math.sqrt(2.0 * math.log(2.0 * padded / wrap_probability))
    half_ring = float(1 << (bits - 1))
    room = (half_ring / sigmas) ** 2 - most / 4.0
    if room <= 0:
        raise PrivacyError(
            f"{bits}-bit ring cannot hold the sum of {most} devices: rounding alone would "
            f"wrap around (k={sigmas:.2f} sigmas); use more bits or fewer clients"
        )
    spread = most * most / padded + noise_multiplier**2 * most / clients
    scale = math.sqrt(room / (clip * clip * spread))
    if noise_multiplier > 0:
        scale = min(scale, MAX_LOCAL_STDDEV * math.sqrt(clients) / (noise_multiplier * clip))
    params = DistributedDPParams(
        clip=float(clip),
        noise_multiplier=float(noise_multiplier),
        clients=clients,
        dim=dim,
        bits=bits,
        noise=noise,
        beta=float(beta),
        scale=scale,
        local_stddev=noise_multiplier * clip * scale / math.sqrt(clients),
        norm_bound=rounded_norm_bound(clip * scale, padded, beta),
        wrap_sigmas=sigmas,
    )
    _check_params(params)
    check_wraparound(params, most)
    return params


def wraparound_sigmas(params: DistributedDPParams, clients: int) -> float:
    """How many standard deviations of a sum coordinate fit in half the ring for `clients`."""
    if clients < 1:
        raise PrivacyError(f"clients must be >= 1, got {clients}")
    signal = (params.scale * params.clip) ** 2 * clients * clients / params.padded_dim
    variance = signal + clients * (params.local_stddev**2 + 0.25)
    return (params.modulus / 2.0) / math.sqrt(variance)


def check_wraparound(params: DistributedDPParams, clients: int) -> None:
    """Raise PrivacyError if the noisy sum of `clients` devices may wrap around the ring.

    Call it when the cohort differs from the one the parameters were chosen for.
    """
    fit = wraparound_sigmas(params, clients)
    if fit < params.wrap_sigmas * (1.0 - _RELATIVE_TOLERANCE):
        raise PrivacyError(
            f"sum of {clients} devices may wrap around the {params.bits}-bit ring: only "
            f"{fit:.2f} standard deviations fit, {params.wrap_sigmas:.2f} needed"
        )


def _check_inputs(
    clip: float,
    clients: int,
    dim: int,
    noise_multiplier: float,
    bits: int,
    beta: float,
    wrap_probability: float,
) -> None:
    if not math.isfinite(clip) or clip <= 0:
        raise PrivacyError(f"clip must be a finite number > 0, got {clip}")
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise PrivacyError(f"clients must be an integer >= 1, got {clients!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise PrivacyError(f"dim must be an integer >= 1, got {dim!r}")
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise PrivacyError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise PrivacyError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    if not 0 <= beta < 1:
        raise PrivacyError(f"beta must be in [0, 1), got {beta}")
    if not 0 < wrap_probability < 1:
        raise PrivacyError(f"wrap probability must be in (0, 1), got {wrap_probability}")


def _check_params(params: DistributedDPParams) -> None:
    _check_inputs(
        params.clip,
        params.clients,
        params.dim,
        params.noise_multiplier,
        params.bits,
        params.beta,
        DEFAULT_WRAP_PROBABILITY,
    )
    for name in ("scale", "local_stddev", "norm_bound", "wrap_sigmas"):
        value = getattr(params, name)
        if not math.isfinite(value) or value < 0:
            raise PrivacyError(
                f"distributed DP params: {name} must be finite and >= 0, got {value}"
            )
    if params.scale <= 0:
        raise PrivacyError(f"distributed DP params: scale must be > 0, got {params.scale}")
    signal = params.clip * params.scale
    if params.norm_bound < signal:
        raise PrivacyError(
            f"distributed DP params: norm bound {params.norm_bound:.6g} is below the scaled clip "
            f"{signal:.6g}"
        )
    if params.norm_bound > MAX_SENSITIVITY_INFLATION * signal:
        raise PrivacyError(
            f"{params.bits}-bit ring is too coarse for {params.clients} devices and "
            f"{params.dim} coordinates: rounding inflates the sensitivity "
            f"{params.norm_bound / signal:.2f}x (max {MAX_SENSITIVITY_INFLATION}x); "
            "use more bits or fewer clients"
        )
    check_wraparound(params, params.clients)
