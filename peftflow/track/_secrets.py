"""A tracking URI can carry a password (http://user:pass@host): it is shown only redacted."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from peftflow.store import audit

# scheme://user:password@ anywhere in a text (MLflow's own errors quote the whole URI)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<pw>[^/@\s]+)@")


def redact_uri(uri: str) -> str:
    """The URI with its password replaced by *** (user, host and path stay readable)."""
    return scrub(uri, uri)


def _passwords(uri: str) -> list[str]:
    try:
        password = urlsplit(uri).password
    except ValueError:  # an unparsable port: the regex below still finds the userinfo
        password = None
    found = [p for p in (password, unquote(password or ""))
             if p and len(p) >= 3]  # shorter would blank unrelated text; the regex covers it
    found += [m.group("pw") for m in _USERINFO.finditer(uri)]
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, uri: str) -> str:
    """`text` without the password of `uri`, any other URL password, or key=secret pairs."""
    for password in _passwords(uri):
        text = text.replace(password, audit.REDACTED)
    text = _USERINFO.sub(rf"\g<head>:{audit.REDACTED}@", text)
    return str(audit.redact(text))
