"""`ledgerflow deploy`: one Prefect deployment per pipeline config, built from the config itself.

The deployment's schedule is the config's `cron_schedule` in the config's `timezone`, its
`config_block` parameter is the config's name, and it is created with Prefect's own deployment
API (`Flow.to_deployment(...).apply()`), so running it again updates the same deployment (Prefect
upserts by flow and name and replaces the schedule) instead of adding a second one.

The flow is referenced by module path (`ledgerflow.flows.pipeline.windowed_pipeline`), not by a
file in this folder: a process worker or a Prefect 2 agent on any machine where ledgerflow is
installed can run it, with no pull step and no working directory to agree on.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from ledgerflow.blocks.config import load_final_config
from ledgerflow.compat import AGENTS, PREFECT_VERSION
from ledgerflow.errors import ConfigError
from ledgerflow.flows.pipeline import windowed_pipeline

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
    return str(url)


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
            agent = f" (or `--type {AGENT_POOL_TYPE}` for `prefect agent start`)" if AGENTS else ""
            raise ConfigError(
                f"work pool {pool!r} does not exist on the Prefect server at {url}; create it "
                f"with `prefect work-pool create {pool} --type process`{agent}"
            ) from None
    if work_pool.type == AGENT_POOL_TYPE and not AGENTS:
        # Its runs would stay Scheduled for ever: Prefect 3 has no `prefect agent start`.
        raise ConfigError(
            f"work pool {pool!r} on the Prefect server at {url} is an agent pool (type "
            f"{AGENT_POOL_TYPE}), and Prefect {PREFECT_VERSION} has no agents to run it; deploy "
            f"to a process pool instead: `prefect work-pool create {DEFAULT_POOL} --type "
            f"process`, `ledgerflow deploy -c {config_name} --pool {DEFAULT_POOL}` (it moves "
            f"the deployment), `prefect worker start --pool {DEFAULT_POOL}`"
        )
    deployment = await windowed_pipeline.to_deployment(
        name=name or config_name,
        schedule=CronSchedule(cron=config.cron_schedule, timezone=config.timezone),
        parameters={"config_block": config_name},
        description=(
            f"Pipeline {config.pipeline_id!r} from the PipelineConfig block {config_name!r}; "
            "created by `ledgerflow deploy`."
        ),
        tags=["ledgerflow", config.pipeline_id],
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
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
