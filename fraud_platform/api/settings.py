"""The API's settings, read from the environment and validated at start like `fraud_platform.config`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from fraud_platform.config import ConfigError, _choice, _integer

DEADLINE_VAR = "FRAUD_PLATFORM_API_DEADLINE_MS"
STAND_IN_VAR = "FRAUD_PLATFORM_API_STAND_IN"
API_KEY_VAR = "FRAUD_PLATFORM_API_KEY"
FLOW_STALE_VAR = "FRAUD_PLATFORM_API_FLOW_STALE_SECONDS"

DEFAULT_DEADLINE_MS = 50
STAND_INS = ("review", "approve", "decline")  # the first is the default
DEFAULT_FLOW_STALE_SECONDS = 30  # three of the flow's metric intervals
MIN_API_KEY_LENGTH = 16


@dataclass(frozen=True)
class ApiSettings:
    """How long a request may wait for the flow, what it answers when it cannot, who may call it."""

    deadline_ms: int = DEFAULT_DEADLINE_MS
    stand_in: str = STAND_INS[0]
    api_key: str | None = field(default=None, repr=False)  # a secret: never in logs or tracebacks
    flow_stale_seconds: int = DEFAULT_FLOW_STALE_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        """Read and validate the API's variables; raise ConfigError naming the first bad one."""
        env = os.environ if environ is None else environ
        api_key = env.get(API_KEY_VAR) or None
        if api_key is not None and (len(api_key) < MIN_API_KEY_LENGTH or api_key != api_key.strip()):
            raise ConfigError(
                f"{API_KEY_VAR}: use at least {MIN_API_KEY_LENGTH} characters without surrounding whitespace"
            )
        return cls(
            deadline_ms=_integer(env, DEADLINE_VAR, DEFAULT_DEADLINE_MS, 1, 60_000),
            stand_in=_choice(env, STAND_IN_VAR, STAND_INS),
            api_key=api_key,
            flow_stale_seconds=_integer(env, FLOW_STALE_VAR, DEFAULT_FLOW_STALE_SECONDS, 1, 86_400),
        )
