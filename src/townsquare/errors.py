"""The one exception tree of townsquare. ``api/errors.py`` maps it to HTTP responses.

::

    TownsquareError                 500 internal_error
    ├── ConfigurationError          500 configuration_error  (a setting or key file is unusable)
    ├── InvalidRequest              400 invalid_request
    │   └── PromptTooLong           400 context_length_exceeded
    ├── Unauthorized                401 invalid_api_key
    ├── Forbidden                   403 forbidden
    ├── NotFound                    404 not_found
    │   └── ModelNotFound           404 model_not_found
    ├── Conflict                    409 conflict             (e.g. a red-team run is running)
    ├── PayloadTooLarge             413 payload_too_large
    ├── InvalidField                422 invalid_field        (carries the field's name)
    ├── InvalidImage                422 invalid_image
    │   └── WatermarkError          422 invalid_image        (safety/watermark.py)
    ├── InvalidBatch                422 invalid_batch        (carries the bad rows)
    ├── ContentBlocked              422 content_blocked      (carries hazard codes)
    ├── Busy                        429 busy                 (carries retry_after seconds)
    │   ├── QuotaExceeded           429 quota_exceeded
    │   └── TooManyStreams          429 too_many_streams
    └── BackendError                502 backend_error
        ├── InvalidOutput           502 invalid_output       (structured output failed twice)
        └── BackendUnavailable      503 backend_unavailable
            ├── ImagesNotConfigured 503 images_not_configured
            ├── BlobStoreUnavailable 503 blob_store_unavailable (the image store is down)
            └── QuotasUnavailable   503 quotas_unavailable  (Redis down, fallback 'closed')

Every message says what to do next: it is shown to the caller as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TownsquareError(Exception):
    """Base of every error townsquare raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(TownsquareError):
    """The server's own configuration is unusable (a short key, an empty key file)."""

    code = "configuration_error"


class InvalidRequest(TownsquareError):
    status_code = 400
    code = "invalid_request"


class PromptTooLong(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(TownsquareError):
    status_code = 401
    code = "invalid_api_key"


class Forbidden(TownsquareError):
    status_code = 403
    code = "forbidden"


class NotFound(TownsquareError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(TownsquareError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(TownsquareError):
    status_code = 413
    code = "payload_too_large"


class InvalidField(TownsquareError):
    """A field passed type validation but breaks a limit or rule (names the field)."""

    status_code = 422
    code = "invalid_field"

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidImage(TownsquareError):
    """An upload that is not a usable image (not an image, truncated, too small or too big)."""

    status_code = 422
    code = "invalid_image"


class InvalidBatch(TownsquareError):
    """Some rows of an ingestion batch are bad; nothing was stored. ``rows`` says which and why."""

    status_code = 422
    code = "invalid_batch"

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows


class ContentBlocked(TownsquareError):
    """The safety pipeline refused an input or an output."""

    status_code = 422
    code = "content_blocked"

    def __init__(self, message: str, hazards: Sequence[str], *, support: str | None = None) -> None:
        super().__init__(message)
        self.hazards = list(hazards)
        self.support = support  # support resources (S11), shown instead of a bare refusal


class Busy(TownsquareError):
    """The model's queue is full; the caller should retry after ``retry_after`` seconds."""

    status_code = 429
    code = "busy"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(Busy):
    """A per-user or per-group quota is used up until its window ends."""

    code = "quota_exceeded"


class TooManyStreams(Busy):
    """A member already holds as many open event streams as a replica allows."""

    code = "too_many_streams"


class BackendError(TownsquareError):
    status_code = 502
    code = "backend_error"


class InvalidOutput(BackendError):
    """The model's structured answer failed validation, even after one retry."""

    code = "invalid_output"


class BackendUnavailable(BackendError):
    status_code = 503
    code = "backend_unavailable"


class ImagesNotConfigured(BackendUnavailable):
    """No image engine is set (``images.backend = none``)."""

    code = "images_not_configured"

    def __init__(self) -> None:
        super().__init__(
            "No image model is configured on this townsquare, so it cannot make images. An "
            "operator sets TOWNSQUARE_IMAGES__BACKEND to 'diffusers:/path/to/pipeline-dir' (a "
            "diffusers pipeline on disk, e.g. SD-Turbo) or 'openai:http://host:port/v1#model' "
            "(an OpenAI Images server); see docs/imagine.md."
        )


class BlobStoreUnavailable(BackendUnavailable):
    """The image store (S3-compatible object storage, the database) did not answer."""

    code = "blob_store_unavailable"


class QuotasUnavailable(BackendUnavailable):
    """The shared quota store cannot be reached and ``quotas.redis_fallback`` is 'closed'."""

    code = "quotas_unavailable"
