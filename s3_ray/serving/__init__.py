"""What the HTTP apps share: the request guard (bearer-token auth, body and text limits)."""

from s3_ray.serving.guard import (
    OPEN_PATHS,
    AsciiJSONResponse,
    Guard,
    GuardConfigError,
    GuardMiddleware,
    read_token,
    text_errors,
)

__all__ = ["OPEN_PATHS", "AsciiJSONResponse", "Guard", "GuardConfigError", "GuardMiddleware", "read_token", "text_errors"]
