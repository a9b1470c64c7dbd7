"""What a shared-memory region's name may be, for both kinds (system and CUDA): names
are unique across kinds, as in Triton, since a tensor names only its region."""

from __future__ import annotations

from inferd.engines.errors import EngineError, ErrorCode

MAX_NAME_LENGTH = 1024
RESERVED_PREFIX = "inferd_"  # kept for inferd's own objects


def check_region_name(name: str) -> None:
    if not name:
        raise EngineError(ErrorCode.INVALID_ARGUMENT, "a shared memory region needs a name")
    if len(name) > MAX_NAME_LENGTH:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"shared memory region names are at most {MAX_NAME_LENGTH} characters",
        )
    if name.startswith(RESERVED_PREFIX):
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"failed to register shared memory region '{name}': names starting with "
            f"'{RESERVED_PREFIX}' are reserved for inferd",
        )


def already_registered(name: str) -> EngineError:
    return EngineError(
        ErrorCode.ALREADY_EXISTS, f"shared memory region '{name}' already in manager"
    )
