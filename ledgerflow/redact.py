"""Credentials out of URLs before anything prints them: one helper for every block and the ledger.

Error text reaches the ledger's error column, run logs, the flow state and notification mail, so
every URL a message holds goes through `scrub_url` (a URL) or `scrub_urls` (free text) first.
The whole user info is masked, not only the password: a password with an unencoded `@`, `#` or
`/` makes a URL parse wrongly, and a parser that splits it at the wrong place shows its tail.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

import pydantic
import pydantic.v1

MASK = "***"
MIN_SECRET = 4
_MODELS: tuple[type, ...] = (pydantic.BaseModel, pydantic.v1.BaseModel)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# Query parameters whose values are secrets: password, sslpassword, passwd, pwd, token,
# access_token, secret, client_secret, api_key, apikey, credentials, sig/signature (presigned).
_SECRET_PARAM = re.compile(
    r"pass|pwd|token|secret|api[-_]?key|credential|signature|^sig$|^auth", re.IGNORECASE
)
# One query parameter: a key, then its value up to the next `&`. SQLAlchemy (and `parse_qsl`)
# end a value only at `&`: a `#` or `;` inside a password is part of it, not a separator.
_PARAM = re.compile(r"([?&])([^=&]*)=([^&]*)")
# A key inside such a value, after a `;` or `#` (an old-style `;` separator or a fragment).
_INNER_KEY = re.compile(r"[;#]([^=&;#]+)=")


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
    """`?key=value`: the value masked when the key, percent-decoded as the driver reads it
    (`p%61ssword` is `password`), names a secret; and from any secret key a `;` or `#` hides
    inside a value on, whatever follows is masked up to the next `&`."""
    sep, key, value = match.groups()
    if value and _is_secret(key):
        return f"{sep}{key}={MASK}"
    for inner in _INNER_KEY.finditer(value):
        if _is_secret(inner.group(1)):
            return f"{sep}{key}={value[: inner.end()]}{MASK}"
    return match.group()


def _is_secret(key: str) -> bool:
    return bool(_SECRET_PARAM.search(unquote(key).strip()))


def secret_texts(value: object) -> list[str]:
    """Every secret a block holds (`SecretStr`, `SecretBytes`, a `SecretDict`'s values, in
    nested blocks too), longest first: what `mask_secrets` hides in text a third-party library
    wrote, such as an HTTP error that quotes a webhook URL with a token in its path."""
    found: set[str] = set()
    _collect(value, False, found, 0)
    return sorted(found, key=len, reverse=True)


def mask_secrets(text: str, secrets: list[str]) -> str:
    """`text` with every secret of `secret_texts` (4 characters or more: a shorter one cannot
    be told from ordinary text) replaced by the mask, and every URL in it scrubbed."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, MASK)
    return scrub_urls(text)


def _collect(value: object, secret: bool, found: set[str], depth: int) -> None:
    if depth > 8:
        return
    reveal = getattr(value, "get_secret_value", None)
    if callable(reveal):
        _collect(reveal(), True, found, depth + 1)
    elif isinstance(value, str | bytes):
        if secret:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            found.update({text, quote(text, safe="")} - {""})
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, secret, found, depth + 1)
    elif isinstance(value, list | tuple | set):
        for item in value:
            _collect(item, secret, found, depth + 1)
    elif isinstance(value, _MODELS):  # a block (Prefect 2: pydantic.v1; Prefect 3: pydantic)
        for name, item in vars(value).items():
            if not name.startswith("_"):
                _collect(item, secret, found, depth + 1)
