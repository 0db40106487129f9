"""Whether the Hugging Face hub can be reached, decided in one place for encoder weights and published models.

``huggingface_hub`` retries a refused or unanswered connection for about 47 s before it gives up, and reads
``HF_HUB_OFFLINE`` once, when it is imported. msa2net asks first: :func:`check_hub` reads ``HF_HUB_OFFLINE`` and
``HF_ENDPOINT`` now (so a change of the environment counts), and opens one TCP connection to the endpoint with a
short timeout before ``huggingface_hub`` is asked for anything; files already in the hub cache are used without it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.parse

__all__ = ["HUB_PROBE_TIMEOUT_S", "HubUnreachable", "check_hub", "hub_endpoint", "hub_offline"]

#: Seconds the probe waits for a TCP connection to the endpoint (DNS included).
HUB_PROBE_TIMEOUT_S = 4.0


class HubUnreachable(OSError):
    """The hub cannot be reached now; ``str()`` says why (offline mode, or no connection in time)."""


def hub_endpoint() -> str:
    """The hub's URL: ``HF_ENDPOINT`` read now, default ``https://huggingface.co``."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    """Whether offline mode is asked for (``HF_HUB_OFFLINE``, or ``TRANSFORMERS_OFFLINE``), with huggingface_hub's
    own true values (``1``, ``ON``, ``YES``, ``TRUE``, any case), read now rather than at its import."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ENV_VARS_TRUE_VALUES


def check_hub(timeout: float = HUB_PROBE_TIMEOUT_S) -> str:
    """The endpoint, once it is known to answer.

    Raises:
        HubUnreachable: offline mode is set, or no TCP connection to the endpoint opened within ``timeout`` seconds.
    """
    endpoint = hub_endpoint()
    if hub_offline():
        raise HubUnreachable("HF_HUB_OFFLINE is set")
    if not _reachable(endpoint, timeout):
        raise HubUnreachable(f"no connection to {endpoint} within {timeout:g} s: offline?")
    return endpoint


def _reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` seconds (DNS included)."""
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    connected: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            connected.append(True)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores timeouts; bound it here
    thread.start()
    thread.join(timeout)
    return bool(connected)
