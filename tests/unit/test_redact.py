"""URLs are scrubbed of credentials before anything prints them; `${VAR}` values are encoded
where they land in a URL's user info or query."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.deployments.save_blocks import build_blocks
from ledgerflow.redact import has_userinfo, scrub_url, scrub_urls

SECRET = "s3cr3t!@#"


@pytest.mark.parametrize(
    ("url", "scrubbed"),
    [
        ("postgresql+asyncpg://etl:pw@db:5432/etl", "postgresql+asyncpg://***@db:5432/etl"),
        # A raw @ and # in the password: the whole user info goes, up to the last @.
        (
            f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1/db",
            "postgresql+asyncpg://***@127.0.0.1/db",
        ),
        ("http://elastic@es:9200", "http://***@es:9200"),
        (
            "postgresql+asyncpg://etl@db/etl?password=pw&sslpassword=k&application_name=lf",
            "postgresql+asyncpg://***@db/etl?password=***&sslpassword=***&application_name=lf",
        ),
        (
            "https://es:9200/?access_token=t&api_key=k&client_secret=c&X-Amz-Signature=s&page=2",
            "https://es:9200/?access_token=***&api_key=***&client_secret=***&X-Amz-Signature=***&page=2",
        ),
        # The driver decodes the key and ends a value only at `&`: `#` and `;` are the password's.
        ("postgresql+asyncpg://h/d?p%61ssword=pw1", "postgresql+asyncpg://h/d?p%61ssword=***"),
        (
            "postgresql+asyncpg://h/d?password=a#pw2&x=1",
            "postgresql+asyncpg://h/d?password=***&x=1",
        ),
        ("postgresql+asyncpg://h/d?password=a;pw3", "postgresql+asyncpg://h/d?password=***"),
        ("http://h:1/x?a=1;token=pw4&b=2", "http://h:1/x?a=1;token=***&b=2"),
        ("http://h:1/x?a=1#api_key=pw5", "http://h:1/x?a=1#api_key=***"),
        ("sqlite+aiosqlite:///.ledgerflow/ledger.db", "sqlite+aiosqlite:///.ledgerflow/ledger.db"),
        ("https://es.example.com:9200", "https://es.example.com:9200"),
    ],
)
def test_scrub_url(url: str, scrubbed: str) -> None:
    assert scrub_url(url) == scrubbed


def test_urls_inside_free_text_are_scrubbed() -> None:
    text = "connect to 'http://u:pw1@h:1/x?token=tk2' failed; retrying http://h:2"
    assert scrub_urls(text) == "connect to 'http://***@h:1/x?token=***' failed; retrying http://h:2"


def test_user_info_is_detected_with_or_without_a_scheme() -> None:
    assert has_userinfo("http://u:p@h:9200") and has_userinfo("u:p@h:9200")
    assert not has_userinfo("https://h:9200/") and not has_userinfo("h:9200")


def test_the_ledger_url_shows_no_part_of_a_password() -> None:
    for url in (
        f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:5432/etl",
        "postgresql+asyncpg://postgres:s3cr3t%21%40%23@127.0.0.1:5432/etl",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/etl?password=s3cr3t%21",
    ):
        shown = LedgerDatabase.parse_obj({"url": url}).display_url()
        assert "s3cr3t" not in shown and "#" not in shown and "%2" not in shown, shown
        assert shown.endswith("127.0.0.1:5432/etl") or "password=***" in shown


def test_a_substituted_password_is_encoded_where_it_lands_in_a_url() -> None:
    document = {
        "ledger": {
            "type": "ledgerflow-ledger-database",
            "name": "x",
            "url": "postgresql+asyncpg://${USER}:${PW}@127.0.0.1:5432/${DB}?password=${PW}",
        }
    }
    env = {"USER": "etl@corp", "PW": SECRET, "DB": "etl"}
    ((_, block),) = build_blocks(document, env)
    assert isinstance(block, LedgerDatabase)
    parsed = sa.engine.make_url(block.url.get_secret_value())
    assert (parsed.username, parsed.password, parsed.host, parsed.port) == (
        "etl@corp",
        SECRET,
        "127.0.0.1",
        5432,
    )
    assert (parsed.database, parsed.query["password"]) == ("etl", SECRET)
    # A variable that holds a whole URL is taken as written (it is already a URL).
    document["ledger"]["url"] = "${URL}"
    ((_, block),) = build_blocks(document, {"URL": "postgresql+asyncpg://a:b%40c@h/db"})
    assert sa.engine.make_url(block.url.get_secret_value()).password == "b@c"


def test_a_blocks_secrets_are_masked_in_text_a_library_wrote() -> None:
    """A webhook block puts its `secrets` into the URL's path, where no URL rule finds them."""
    from ledgerflow.redact import mask_secrets, secret_texts
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name="hook",
        url="https://hooks.example.com/{{token}}/x?sig={{short}}",
        secrets={"token": "tok/en 9f3a", "short": "ab"},
    )
    found = secret_texts(block)
    assert found[:2] == ["tok%2Fen%209f3a", "tok/en 9f3a"]  # longest first, as sent and encoded
    text = "500 for url 'https://u:pw@hooks.example.com/tok%2Fen%209f3a/x?sig=ab' (tok/en 9f3a)"
    assert mask_secrets(text, found) == (
        "500 for url 'https://***@hooks.example.com/***/x?sig=***' (***)"
    )
