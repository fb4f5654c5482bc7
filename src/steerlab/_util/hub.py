"""Whether the Hugging Face Hub can be used: offline mode, and a quick reachability probe made
before a download, so offline use fails at once in one sentence instead of retrying."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

HUB_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    """Whether offline mode is set (``HF_HUB_OFFLINE``, as huggingface_hub reads it)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the hub (``HF_ENDPOINT``) answers at all within ``timeout`` seconds (any HTTP
    status counts); False in offline mode, without a probe."""
    from huggingface_hub import constants

    if hub_offline():
        return False
    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, timeouts, refused connections; a bad endpoint
        return False
