"""Which URLs the server itself may call: one allow-list policy, shared by the Whisper executor's audio
URLs (``allowed_url_hosts``) and the gateway's job callbacks (``webhook_hosts``).

An allow-list names ``host`` (any port) or ``host:port``; an empty one allows nothing, so nobody can make
the server reach its own network (a cloud metadata address, a database on localhost) by sending a URL.
The host checked is the host connected to: the callers connect to ``urlsplit(url).hostname`` and
``.port``, follow no redirect, and refuse user names and passwords in the URL.
"""

from typing import Iterable, Optional
from urllib.parse import SplitResult

from s2i.contracts.params import quote

CREDENTIALS_REFUSED = '{subject} must not hold a user name or password (user:password@host); they are never sent'


def host_refusal(parts: SplitResult, allowed_hosts: Iterable[str], subject: str, setting: str) -> Optional[str]:
    """Why the URL (split by urlsplit) may not be called, or None: credentials in it, or a host outside
    ``allowed_hosts``. ``subject`` names the URL in the message (``audio URL``) and ``setting`` the list.

    Raises ValueError for a malformed port (``http://host:99999``), as ``SplitResult.port`` does."""
    if '@' in parts.netloc:  # "http://allowed.example@127.0.0.1/": which host is meant depends on who parses it
        return CREDENTIALS_REFUSED.format(subject=subject)
    host, host_port = (parts.hostname or '').lower(), host_and_port(parts)
    allowed = {h.lower() for h in allowed_hosts}
    if host not in allowed and host_port not in allowed:
        return f'{subject} host {quote(host_port)} is not allowed ({setting}: {", ".join(sorted(allowed)) or "none"})'
    return None


def host_and_port(parts: SplitResult) -> str:
    """``host`` or ``host:port`` as connected to, lower-case."""
    host, port = (parts.hostname or '').lower(), parts.port
    return f'{host}:{port}' if port else host
