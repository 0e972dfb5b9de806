"""Credentials out of URLs before anything prints them: one helper for every block and the ledger.

Error text reaches the ledger's error column, run logs, the flow state and notification mail, so
every URL a message holds goes through `scrub_url` (a URL) or `scrub_urls` (free text) first.
The whole user info is masked, not only the password: a password with an unencoded `@`, `#` or
`/` makes a URL parse wrongly, and a parser that splits it at the wrong place shows its tail.
"""

from __future__ import annotations

import re

MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# Query parameters whose values are secrets: password, sslpassword, passwd, pwd, token,
# access_token, secret, client_secret, api_key, apikey, credentials, sig/signature (presigned).
_SECRET_PARAM = re.compile(
    r"pass|pwd|token|secret|api[-_]?key|credential|signature|^sig$|^auth", re.IGNORECASE
)
_PARAM = re.compile(r"([?&;])([^=&;#?]+)=([^&;#]*)")


def has_userinfo(url: str) -> bool:
    """Whether `url` carries a user (and maybe a password) before its host."""
    return "@" in _authority_and_rest(url)


def scrub_url(url: str) -> str:
    """`url` with its user info masked whole (`scheme://***@host`) and the values of
    password-like query parameters masked (`?password=***`)."""
    scheme = _SCHEME.match(url)
    head = scheme.group() if scheme else ""
    rest = url[len(head) :]
    at = rest.rfind("@")  # the last one: a raw password may hold more
    if at >= 0:
        rest = f"{MASK}@{rest[at + 1 :]}"
    return head + _PARAM.sub(_mask_param, rest)


def scrub_urls(text: str) -> str:
    """Free text (a driver's error message) with every URL in it scrubbed."""
    return _URL_IN_TEXT.sub(lambda m: scrub_url(m.group()), text)


def _authority_and_rest(url: str) -> str:
    scheme = _SCHEME.match(url)
    return url[scheme.end() :] if scheme else url


def _mask_param(match: re.Match[str]) -> str:
    sep, key, value = match.groups()
    return f"{sep}{key}={MASK}" if _SECRET_PARAM.search(key) and value else match.group()
