"""A webhook URL is checked when a contact is saved: https, and every address its host resolves
to is public. (Delivery resolves again: a name may change its answer after it was saved.)"""

from __future__ import annotations

import socket

from coldchain.errors import ValidationError
from coldchain.webhook_url import public_address, webhook_host


def check_webhook_url(url: str, *, allow_private: bool = False) -> None:
    host, port = webhook_host(url, allow_private=allow_private)
    if allow_private:
        return
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ValidationError(f"the webhook host {host!r} does not resolve", field="webhook_url") from None
    for *_, sockaddr in answers:
        address = str(sockaddr[0])
        if not public_address(address):
            raise ValidationError(
                f"the webhook host {host!r} resolves to {address}, which is not a public address",
                field="webhook_url",
            )
