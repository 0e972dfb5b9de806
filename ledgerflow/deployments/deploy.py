"""`ledgerflow deploy`: one Prefect deployment per pipeline config, built from the config itself.

The deployment's schedule is the config's `cron_schedule` in the config's `timezone`, its
`config_block` parameter is the config's name, and it is created with Prefect's own deployment
API (`Flow.to_deployment(...).apply()`), so running it again updates the same deployment (Prefect
upserts by flow and name and replaces the schedule) instead of adding a second one.

The flow is referenced by module path (`ledgerflow.flows.pipeline.windowed_pipeline`), not by a
file in this folder: a process worker (or, on Prefect 2 only, an agent) on any machine where
ledgerflow is installed can run it, with no pull step and no working directory to agree on.
Prefect 3 has no agents: a `prefect-agent` pool (one kept from a Prefect 2 server) is refused,
since nothing would ever run the deployment's flow runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from ledgerflow.blocks.config import load_final_config
from ledgerflow.compat import HAS_AGENTS, PREFECT_VERSION, cron_schedule, module_path_entrypoint
from ledgerflow.errors import ConfigError
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.redact import scrub_url

DEFAULT_POOL = "ledgerflow-process"
AGENT_POOL_TYPE = "prefect-agent"


@dataclass(frozen=True)
class Deployed:
    """What `ledgerflow deploy` created or updated, and where."""

    id: str
    flow_name: str
    name: str
    pool: str
    pool_type: str
    api_url: str
    cron: str
    timezone: str
    config_block: str

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


def api_url() -> str:
    """The Prefect API this process talks to; refuse the ephemeral one nobody else can see."""
    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set, so this would deploy to a temporary local Prefect "
            "database that no worker reads; point it at your server first, e.g. "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    return scrub_url(str(url))  # only ever shown: a proxy's user info stays out of it


async def deploy(config_name: str, pool: str = DEFAULT_POOL, name: str | None = None) -> Deployed:
    """Create or update the deployment of the pipeline config `config_name` on `pool`."""
    url = api_url()
    # The config must exist on the server the worker reads it from, or every run would fail.
    try:
        config = await load_final_config(config_name)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (on the Prefect server at {url})") from None
    async with get_client() as client:
        try:
            work_pool = await client.read_work_pool(pool)
        except ObjectNotFound:
            agent = " (or `--type prefect-agent` for `prefect agent start`)" if HAS_AGENTS else ""
            raise ConfigError(
                f"work pool {pool!r} does not exist on the Prefect server at {url}; create it "
                f"with `prefect work-pool create {pool} --type process`{agent}"
            ) from None
    if work_pool.type == AGENT_POOL_TYPE and not HAS_AGENTS:
        # Its runs would stay Scheduled for ever. Such a pool survives a Prefect 2 server's
        # upgrade, and Prefect 3's API still creates new ones.
        raise ConfigError(
            f"work pool {pool!r} on the Prefect server at {url} is an agent pool (type "
            f"{AGENT_POOL_TYPE}), and Prefect {PREFECT_VERSION} has no agents to run it (agents "
            "are gone in Prefect 3: there is no `prefect agent start`); deploy to a process pool "
            f"instead: `prefect work-pool create {DEFAULT_POOL} --type process`, `ledgerflow "
            f"deploy -c {config_name} --pool {DEFAULT_POOL}` (it moves the deployment), "
            f"`prefect worker start --pool {DEFAULT_POOL}`"
        )
    # Prefect 3 types to_deployment as sync-or-async; from async code it is a coroutine.
    deployment = await windowed_pipeline.to_deployment(  # type: ignore[misc, unused-ignore]
        name=name or config_name,
        schedule=cron_schedule(config.cron_schedule, config.timezone),
        parameters={"config_block": config_name},
        description=(
            f"Pipeline {config.pipeline_id!r} from the PipelineConfig block {config_name!r}; "
            "created by `ledgerflow deploy`."
        ),
        tags=["ledgerflow", config.pipeline_id],
        enforce_parameter_schema=True,
        entrypoint_type=module_path_entrypoint(),
    )
    deployment_id = await deployment.apply(work_pool_name=pool)
    return Deployed(
        id=str(deployment_id),
        flow_name=windowed_pipeline.name,
        name=deployment.name,
        pool=pool,
        pool_type=work_pool.type,
        api_url=url,
        cron=config.cron_schedule,
        timezone=config.timezone,
        config_block=config_name,
    )
