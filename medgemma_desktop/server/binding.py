"""Where the server listens: this computer only, unless the user names another address, and then only with a key
(anyone who can reach the port could otherwise read answers about patients' images)."""

from __future__ import annotations

import ipaddress

from medgemma_desktop.core.errors import UserFacingError

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def checked_host(host: str | None, api_key: str | None) -> str:
    """The address to bind: loopback by default; any other address only with an API key."""
    if host is None:
        return LOOPBACK
    if not is_loopback(host) and not api_key:
        raise UserFacingError(f"--host {host} would let other computers reach the server, so an API key is required",
                              fix="Add --api-key KEY (clients send it as 'Authorization: Bearer KEY'), or leave "
                                  "--host out to serve this computer only.")
    return host
