"""`ServeConfig`: every knob of ``snowhub serve`` except where it listens (validated once, at start)."""

from __future__ import annotations

from dataclasses import dataclass

from snowhub.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches, what it serves and what it accepts.

    Attributes:
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda[:N]``: where the models stay resident.
        max_batch_size: most images in one batched forward pass (1 = no batching across requests).
        max_wait_ms: how long (ms) the first queued request waits for others to join its batch.
        tasks: the only tasks to serve (``imagenet`` = the source's head); None = every task, new ones too.
        max_image_bytes: largest accepted image upload (bytes); larger ones get 413.
        max_images: most images in one request; more get 413.
        poll_s: how often (s) the registry is checked for newly committed tasks.
        request_timeout_s: longest a request waits for its batch before a 503.
    """

    device: str = "auto"
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    tasks: tuple[str, ...] | None = None
    max_image_bytes: int = 10 * 1024 * 1024
    max_images: int = 64
    poll_s: float = 1.0
    request_timeout_s: float = 60.0

    def validate(self) -> "ServeConfig":
        """Return self. Raises ConfigError (one line, naming the flag) for a value out of range."""
        checks = [(self.max_batch_size >= 1, "--max-batch-size must be at least 1"),
                  (self.max_wait_ms >= 0, "--max-wait-ms must be 0 or more"),
                  (self.max_image_bytes >= 1, "--max-image-bytes must be at least 1"),
                  (self.max_images >= 1, "--max-images must be at least 1"),
                  (self.poll_s > 0, "the registry poll interval must be positive"),
                  (self.tasks is None or len(self.tasks) > 0, "--tasks names no task; leave it out to serve all")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    @property
    def max_request_bytes(self) -> int:
        """Largest request body accepted (room for every image twice over: base64 and JSON tensors)."""
        return 2 * self.max_images * self.max_image_bytes + (1 << 20)
