"""The backend client's exception tree."""

from __future__ import annotations


class LLMError(Exception):
    """Base of every backend failure; `str()` is a short technical description."""

    # Set by the router: the backend the failure came from, and the model it was asked for.
    backend: str | None = None
    model: str | None = None


class LLMNoBackendError(LLMError):
    """Every backend is cooling down or out of rotation; `retry_in` seconds if one cools."""

    def __init__(self, message: str, retry_in: float | None = None) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class LLMTimeoutError(LLMError):
    """The backend did not connect, start or continue answering in time."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"backend timed out ({phase}, {seconds:g}s)")
        self.phase = phase  # "connect", "first_token", "idle" or "total"
        self.seconds = seconds


class LLMUnavailableError(LLMError):
    """The backend could not be reached or the connection broke."""


class LLMProtocolError(LLMError):
    """The backend answered something that is not a valid OpenAI-compatible response."""


class LLMResponseTooLargeError(LLMProtocolError):
    """The backend sent a line or an answer past the bounds the client reads."""


class LLMImageDownloadError(LLMUnavailableError):
    """The image the backend linked to could not be downloaded; `status` if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ImageLinkRefusedError(LLMImageDownloadError):
    """The image link was refused before any request: its scheme, credentials or address."""


class LLMHTTPError(LLMError):
    """The backend answered with an error status or an error object."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.code = code


class LLMAuthError(LLMHTTPError):
    """401/403: the API key is missing, wrong or not allowed."""


class LLMNotFoundError(LLMHTTPError):
    """404 or an unknown-model error: the model (or endpoint) does not exist."""


class LLMBadRequestError(LLMHTTPError):
    """400: the backend rejected the request."""


class LLMContextLengthError(LLMBadRequestError):
    """400 because the prompt does not fit the model's context window."""


class LLMContentPolicyError(LLMBadRequestError):
    """400 because the backend's content policy (safety system, moderation) refused the prompt."""


class LLMRateLimitError(LLMHTTPError):
    """429: too many requests; `retry_after` in seconds when the backend said."""

    def __init__(
        self, status: int, message: str, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(status, message, code)
        self.retry_after = retry_after


class LLMServerError(LLMHTTPError):
    """5xx (or an in-stream server error): the backend failed."""
