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
        threads: torch intra-op threads for the forward passes on the CPU; None = the CPUs this process may
            use minus one, which is left to the HTTP event loop (see :meth:`intra_op_threads`).
        max_image_pixels: most pixels one image may decode to (JPEGs above it are decoded at a reduced
            scale when that fits, others get 413); 25 MP = a 24-megapixel photo.
        max_request_pixels: most decoded pixels of one request's images together (413 above), and of all the
            images being decoded in the server at once (decodes wait their turn): at 3 bytes a pixel and up
            to twice that while an image converts, the default 50 MP keeps decoding under ~350 MB.
        max_queue: most inference requests admitted at once (being read, decoded, queued or run); one more
            gets 503 with ``Retry-After``.
        runtime: what runs the forward passes: ``torch`` (the reference, and this class's default),
            ``auto`` (``snowhub serve``'s default: ONNX Runtime on a CPU, PyTorch on a GPU; a task whose graph
            fails its check is answered by PyTorch), or ``onnxruntime`` (strict: such a task gets 503 with the
            reason). See :mod:`snowhub.serving.runtime`.
    """

    device: str = "auto"
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    tasks: tuple[str, ...] | None = None
    max_image_bytes: int = 10 * 1024 * 1024
    max_images: int = 64
    poll_s: float = 1.0
    request_timeout_s: float = 60.0
    threads: int | None = None
    max_image_pixels: int = 25_000_000
    max_request_pixels: int = 50_000_000
    max_queue: int = 128
    runtime: str = "torch"

    def validate(self) -> "ServeConfig":
        """Return self. Raises ConfigError (one line, naming the parameter) for a value out of range."""
        checks = [(self.max_batch_size >= 1, "`max_batch_size` must be at least 1"),
                  (self.max_wait_ms >= 0, "`max_wait_ms` must be 0 or more"),
                  (self.max_image_bytes >= 1, "`max_image_bytes` must be at least 1"),
                  (self.max_images >= 1, "`max_images` must be at least 1"),
                  (self.poll_s > 0, "the registry poll interval must be positive"),
                  (self.threads is None or self.threads >= 1, "`threads` must be at least 1"),
                  (self.max_image_pixels >= 1, "`max_image_pixels` must be at least 1"),
                  (self.max_request_pixels >= 1, "`max_request_pixels` must be at least 1"),
                  (self.max_queue >= 1, "`max_queue` must be at least 1"),
                  (self.runtime in ("auto", "torch", "onnxruntime"), "`runtime` must be auto, torch or onnxruntime"),
                  (self.tasks is None or len(self.tasks) > 0, "`tasks` names no task; leave it out to serve all")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def intra_op_threads(self, cpus: int) -> int:
        """Threads for the forward passes on a CPU with `cpus` usable CPUs: ``threads``, else ``cpus - 1``.

        One CPU stays with the event loop (HTTP parsing, uploads, JSON): on 2 cores one intra-op thread
        served the 5 tasks at 32 px 3.13x faster with batching than without, against 2.75x with two threads,
        and was no slower at 224 px (docs/serving.md).
        """
        return self.threads if self.threads is not None else max(1, cpus - 1)

    def max_request_bytes(self, image_size: int = 224) -> int:
        """Largest request body (bytes) for tasks served at `image_size` px: room for ``--max-images`` images of
        ``--max-image-bytes`` each as base64 (4/3 of their size, plus 1 KiB of framing each), or for an OIP
        ``UINT8`` tensor of ``--max-images`` images in JSON (up to 4 characters a value), plus 64 KiB."""
        files = -(-self.max_images * self.max_image_bytes // 3) * 4 + self.max_images * 1024
        tensor = self.max_images * 3 * image_size * image_size * 4
        return max(files, tensor) + (64 << 10)
