"""`PipelineConfig`: the seed's `load_final_config`, as a validated Prefect Block.

Each bad value is refused with one sentence naming the field, the value and what is allowed.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from prefect.blocks.core import Block

from ledgerflow.blocks.checks import forbid_unknown_fields, in_range
from ledgerflow.blocks.config_checks import (
    check_check_field,
    check_cron,
    check_email,
    check_end,
    check_hook_path,
    check_pipeline_id,
    check_slug,
    check_start,
    import_hook,
)
from ledgerflow.compat import (
    Field,
    ValidationError,
    load_block,
    root_validator,
    sync_compatible,
    validator,
)
from ledgerflow.durations import parse_duration
from ledgerflow.errors import ConfigError
from ledgerflow.windows import KEY_FIELDS, KeyHook, check_granularity, zone

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient


class PipelineConfig(Block):
    """Everything one windowed pipeline needs: its windows, its blocks, its retries and alerts.

    Example:
        Load a saved pipeline config:
        ```python
        from ledgerflow.blocks.config import PipelineConfig

        config = PipelineConfig.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Ledgerflow Pipeline Config"
    _block_type_slug = "ledgerflow-pipeline-config"
    _description = (
        "Windows, lag, retries, audit tolerance and the blocks of one ledgerflow pipeline."
    )
    pipeline_id: str = Field(
        ..., title="Pipeline ID", description="Unique name of the pipeline in the ledger."
    )
    timezone: str = Field(
        "America/Los_Angeles", title="Timezone", description="IANA zone the windows align to."
    )
    x_time_back: str = Field(
        "1d",
        title="Stability lag",
        description="A window is loaded only once its end is this far in the past (e.g. 1d).",
    )
    granularity: str = Field(
        "2h", title="Window size", description="A divisor of 24h (e.g. 30m, 2h) or whole days."
    )
    stale_threshold_hours: float = Field(
        2.0,
        title="Stale lock threshold (hours)",
        description="A lock this old with no heartbeat is released.",
    )
    start: datetime | None = Field(
        None,
        title="First window",
        description="ISO instant with offset; the window holding it is the first loaded. "
        "Unset: start at the latest eligible window (no catch-up).",
    )
    end: datetime | None = Field(
        None,
        title="Last instant",
        description="ISO instant with offset; windows starting at or after it are not "
        "registered. Unset: keep following now (a bounded backfill sets it).",
    )
    cron_schedule: str = Field(
        "0 */2 * * *",
        title="Cron schedule",
        description="When `ledgerflow deploy` schedules runs: 5-field cron in the timezone above.",
    )
    email_list: list[str] = Field(
        default_factory=list,
        title="Notify these addresses",
        description="Where failure (and retry) notifications go.",
    )
    email_on_failure: bool = Field(
        True, title="Notify on failure", description="Send a notification when a window fails."
    )
    email_on_retry: bool = Field(
        False, title="Notify on retry", description="Send a notification when a task retries."
    )
    notification_block: str | None = Field(
        None,
        title="Notification block",
        description="Slug of the block that sends alerts: an email-server-credentials block "
        "(mails email_list) or any Prefect notification block, e.g. 'slack-webhook/ops'.",
    )
    max_retry_task: int = Field(3, title="Task retries", description="Retries per task, 0-10.")
    retry_backoff_seconds: float = Field(
        10.0, title="Retry backoff (s)", description="First retry delay; doubles each retry."
    )
    max_window_attempts: int = Field(
        3,
        title="Attempts per window",
        description="Stale-lock releases before a window is marked FAILED.",
    )
    check_fields: list[str] = Field(
        default_factory=lambda: list(KEY_FIELDS),
        title="Check fields",
        description="Record fields that must be non-empty before a window is registered.",
    )
    key_x_hook: str | None = Field(
        None,
        title="key_x function",
        description="'package.module:function' computing a window's key_x, a label recorded "
        "in the ledger (default: the window's stage path). It never moves where the window "
        "is staged.",
    )
    key_y_hook: str | None = Field(
        None,
        title="key_y function",
        description="'package.module:function' computing a window's key_y "
        "(default: its local start-end label).",
    )
    key_z_hook: str | None = Field(
        None,
        title="key_z function",
        description="'package.module:function' computing a window's key_z "
        "(default: its length in seconds).",
    )
    audit_tolerance_percent: float = Field(
        0.0, title="Audit tolerance (%)", description="Allowed |source-target|/source, 0-100."
    )
    claim_order: Literal["oldest_first", "newest_first"] = Field(
        "oldest_first", title="Claim order", description="Which eligible window goes first."
    )
    windows_per_run: int = Field(
        12, title="Windows per run", description="A flow run processes at most this many windows."
    )
    concurrency: int = Field(4, title="Concurrency", description="Windows processed at once, 1-64.")
    ledger_block: str = Field(
        "ledgerflow-ledger-database/default",
        title="Ledger block",
        description="Where window state is kept: '<block-type-slug>/<name>' of a "
        "ledgerflow-ledger-database block.",
    )
    source_block: str = Field(
        ...,
        title="Source block",
        description="What is read: '<block-type-slug>/<name>', e.g. "
        "'ledgerflow-elasticsearch-source/prod'.",
    )
    stage_block: str = Field(
        ...,
        title="Stage block",
        description="Where extracted files wait: '<block-type-slug>/<name>', e.g. "
        "'ledgerflow-s3-stage/prod'.",
    )
    target_block: str = Field(
        ...,
        title="Target block",
        description="Where windows are loaded: '<block-type-slug>/<name>', e.g. "
        "'ledgerflow-snowflake-target/prod'.",
    )

    _pipeline_id = validator("pipeline_id", allow_reuse=True)(check_pipeline_id)

    @validator("timezone")
    def _timezone(cls, v: str) -> str:
        zone(v)
        return v

    @validator("x_time_back")
    def _lag(cls, v: str) -> str:
        parse_duration(v, field="x_time_back", allow_zero=True)
        return v

    @validator("granularity")
    def _granularity(cls, v: str) -> str:
        check_granularity(v)
        return v

    @validator("stale_threshold_hours")
    def _stale(cls, v: float) -> float:
        if not 0 < v <= 24 * 7:
            raise ValueError(f"stale_threshold_hours={v!r} must be > 0 and at most 168 (a week)")
        return v

    _start = validator("start", allow_reuse=True)(check_start)

    _end = validator("end", allow_reuse=True)(check_end)

    _cron = validator("cron_schedule", allow_reuse=True)(check_cron)

    _email = validator("email_list", each_item=True, allow_reuse=True)(check_email)

    _slug = validator(
        "notification_block",
        "ledger_block",
        "source_block",
        "stage_block",
        "target_block",
        allow_reuse=True,
    )(check_slug)

    _retries = in_range("max_retry_task", 0, 10)

    _backoff = in_range("retry_backoff_seconds", 0, 3600)

    _attempts = in_range("max_window_attempts", 1, 100)

    _check_field = validator("check_fields", each_item=True, allow_reuse=True)(check_check_field)

    _hook = validator("key_x_hook", "key_y_hook", "key_z_hook", allow_reuse=True)(check_hook_path)

    _tolerance = in_range("audit_tolerance_percent", 0, 100)

    _per_run = in_range("windows_per_run", 1, 100_000)

    _concurrency = in_range("concurrency", 1, 64)

    @root_validator(skip_on_failure=True)
    def _backoff_fits(cls, values: dict[str, Any]) -> dict[str, Any]:
        # Prefect waits backoff * 2^k before retry k+1 (exponential_backoff), b * (2^n - 1) in
        # all. A window that spends longer than the stale threshold in retries holds its lease
        # past the point where everyone else takes it for dead.
        retries, backoff = values["max_retry_task"], values["retry_backoff_seconds"]
        stale = values["stale_threshold_hours"] * 3600
        total = backoff * (2**retries - 1)
        if total > stale:
            raise ValueError(
                f"retry_backoff_seconds={backoff:g} with max_retry_task={retries} waits "
                f"{backoff:g} x (2^{retries} - 1) = {total:g}s between retries in all, longer "
                f"than stale_threshold_hours={values['stale_threshold_hours']:g} ({stale:g}s); "
                "allowed: retry_backoff_seconds x (2^max_retry_task - 1) <= "
                "stale_threshold_hours x 3600 (lower the backoff or the retries, or raise the "
                "threshold)"
            )
        return values

    @root_validator(pre=True)
    def _drop_default_record(cls, values: dict[str, Any]) -> dict[str, Any]:
        # Configs saved by earlier versions carry `default_record` (source/target labels that
        # nothing ever stored or read): drop it, so they still load and a re-save leaves it out.
        return {key: value for key, value in values.items() if key != "default_record"}

    # After `_drop_default_record`: pydantic runs pre root validators in the order they are defined.
    _known_fields = forbid_unknown_fields()

    # --- derived values -----------------------------------------------------------------------

    @property
    def lag(self) -> timedelta:
        return parse_duration(self.x_time_back, field="x_time_back", allow_zero=True)

    @property
    def step(self) -> timedelta:
        return check_granularity(self.granularity)

    @property
    def stale_after(self) -> timedelta:
        return timedelta(hours=self.stale_threshold_hours)

    def key_hooks(self) -> dict[str, KeyHook]:
        """The configured key hooks, imported; a bad path raises ConfigError naming it."""
        hooks: dict[str, KeyHook] = {}
        for key in KEY_FIELDS:
            path = getattr(self, f"{key}_hook")
            if path:
                hooks[key] = import_hook(f"{key}_hook", path)
        return hooks


def explain(exc: ValidationError, name: str, what: str | None = None) -> ConfigError:
    """One readable ConfigError from a pydantic error: one line per bad field.

    `what` says what is invalid (default: "pipeline config 'NAME'")."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"] if p != "__root__")
        message = err["msg"]
        lines.append(message if not where or where in message else f"{where}: {message}")
    return ConfigError(f"{what or f'pipeline config {name!r}'} is invalid: " + "; ".join(lines))


def validate_config(data: dict[str, Any], name: str = "<inline>") -> PipelineConfig:
    """Build a PipelineConfig from plain data, raising one ConfigError for every bad field."""
    try:
        return PipelineConfig(**data)
    except ValidationError as exc:
        raise explain(exc, name) from None


# Prefect's rule for block document names.
BLOCK_NAME = re.compile(r"[a-z0-9-]+")


@sync_compatible
async def load_final_config(name: str, client: PrefectClient | None = None) -> PipelineConfig:
    """Load the PipelineConfig block `name` and return it validated (the seed's entry point);
    through `client` when given, else a client Prefect opens for this load."""
    if not BLOCK_NAME.fullmatch(name):
        # Prefect's own rule for block names; anything else could not name a saved block, and
        # `..` would be read as a step up the API's URL path (a 422 or a validation error).
        raise ConfigError(
            f"no pipeline config block named {name!r} (block names hold lowercase letters, "
            f"digits and dashes); {saved_configs_sentence(await pipeline_config_names())}"
        )
    try:
        config = await load_block(PipelineConfig, name, client)
    except RuntimeError as exc:
        # Block.load reports a document that fails validation as a RuntimeError caused by it.
        if isinstance(exc.__cause__, ValidationError):
            raise explain(exc.__cause__, name) from None
        raise
    except ValueError as exc:
        if "Unable to find block document" in str(exc):
            raise ConfigError(
                f"no pipeline config block named {name!r}; "
                f"{saved_configs_sentence(await pipeline_config_names())}"
            ) from None
        raise
    return config


async def pipeline_config_names() -> list[str]:
    """The names of the saved PipelineConfig blocks (none when the type was never registered).

    A Prefect server registers only the block types of its own process: until a ledgerflow
    block is saved there, it answers 404 "Block type not found" (an HTTP status error, not
    ObjectNotFound, from this client method)."""
    import httpx
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        try:
            docs = await client.read_block_documents_by_type(
                PipelineConfig._block_type_slug, include_secrets=False
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == httpx.codes.NOT_FOUND:
                return []
            raise
    return sorted(d.name for d in docs if d.name and not d.is_anonymous)


def saved_configs_sentence(names: list[str]) -> str:
    """What to pick from, or how to make the first one."""
    if names:
        return "saved PipelineConfig blocks: " + ", ".join(names)
    return (
        "no PipelineConfig block is saved yet; create one with `ledgerflow blocks register` "
        "or PipelineConfig(...).save(name)"
    )
