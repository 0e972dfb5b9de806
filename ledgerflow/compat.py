"""The one module that knows whether Prefect 2 or Prefect 3 is installed.

Prefect 2.20 (the reference) builds its blocks on pydantic's v1 API (`pydantic.v1`); Prefect 3
builds them on pydantic v2. Block modules import `BaseModel`, `Field`, `SecretStr`,
`PrivateAttr`, `ValidationError`, `validator` and `root_validator` from here, and call
`model_validate`, `model_dump` and `model_copy` instead of the v1-only `parse_obj`, `dict` and
`copy`. On Prefect 2 every name is pydantic.v1's own, so behaviour there is unchanged. On
Prefect 3, `validator` and `root_validator` keep the v1 contract the blocks are written against
(a ValueError's text is the error message, `values`/`field` parameters, `each_item`, post root
validators that see every field) on top of v2's `field_validator`/`model_validator`, without
pydantic's deprecation warnings.

Tasks take `uncached()` (`@task(..., **uncached())`): Prefect 3 caches a task's result by its
inputs, and a side-effecting task (claim, load, audit) must run every time it is called.

This module imports no Prefect at import time: `ledgerflow.prefect_home` must set Prefect's
settings before the first `import prefect`.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from importlib.metadata import version
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

PREFECT_VERSION = version("prefect")
PREFECT_MAJOR = int(PREFECT_VERSION.split(".")[0])
PREFECT_3 = PREFECT_MAJOR >= 3
# Prefect 2 runs a deployment on a `prefect-agent` work pool with `prefect agent start`. Prefect 3
# removed agents (its server still stores such pools, e.g. one kept from a Prefect 2 server, but
# nothing runs their flow runs): workers only.
HAS_AGENTS = not PREFECT_3

M = TypeVar("M")
F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State
    from prefect.tasks import Task

__all__ = [
    "HAS_AGENTS",
    "PREFECT_3",
    "PREFECT_MAJOR",
    "PREFECT_VERSION",
    "BaseModel",
    "Field",
    "PrivateAttr",
    "SecretStr",
    "ValidationError",
    "cron_schedule",
    "field_aliases",
    "model_copy",
    "model_dump",
    "model_validate",
    "module_path_entrypoint",
    "root_validator",
    "sync_compatible",
    "task_state",
    "uncached",
    "validator",
]

if TYPE_CHECKING or not PREFECT_3:
    # Type-checked against the reference (Prefect 2, pydantic.v1).
    from pydantic.v1 import (
        BaseModel,
        Field,
        PrivateAttr,
        SecretStr,
        ValidationError,
        root_validator,
        validator,
    )
else:
    from pydantic import BaseModel, Field, PrivateAttr, SecretStr, ValidationError
    from pydantic import field_validator as _field_validator
    from pydantic import model_validator as _model_validator
    from pydantic_core import PydanticCustomError as _CustomError

    def _named(wrapper: Callable[..., Any], fn: Callable[..., Any]) -> None:
        # Not functools.wraps: pydantic reads the wrapper's own signature (through __wrapped__)
        # to decide how to call it.
        wrapper.__name__ = fn.__name__
        wrapper.__qualname__ = fn.__qualname__
        wrapper.__doc__ = fn.__doc__

    def _as_error(exc: ValueError) -> Exception:
        # v1 reported a validator's ValueError as its text; v2 prefixes "Value error, ".
        return _CustomError("value_error", str(exc))

    def validator(  # type: ignore[no-redef]
        *fields: str,
        pre: bool = False,
        each_item: bool = False,
        always: bool = False,
        allow_reuse: bool = False,
    ) -> Callable[[Callable[..., Any]], Any]:
        """pydantic v1's `@validator` on a v2 model: `(cls, v[, values][, field])`."""

        def decorate(fn: Callable[..., Any]) -> Any:
            params = inspect.signature(fn).parameters
            wants_values, wants_field = "values" in params, "field" in params
            # Like v1: a function whose first parameter is not `cls` is a plain check of the
            # value, shared between models (`validator("f", allow_reuse=True)(check_f)`).
            takes_cls = next(iter(params), None) == "cls"

            def one(cls: Any, v: Any, info: Any) -> Any:
                kwargs: dict[str, Any] = {}
                if wants_values:
                    kwargs["values"] = dict(info.data)
                if wants_field:
                    kwargs["field"] = SimpleNamespace(name=info.field_name)
                return fn(cls, v, **kwargs) if takes_cls else fn(v, **kwargs)

            def check(cls: Any, v: Any, info: Any) -> Any:
                try:
                    if each_item and v is None:
                        return v  # v1 validates the items of a list, and None has none
                    if each_item and isinstance(v, list | tuple | set | frozenset):
                        return type(v)(one(cls, item, info) for item in v)
                    if each_item and isinstance(v, dict):
                        return {k: one(cls, item, info) for k, item in v.items()}
                    return one(cls, v, info)
                except ValueError as exc:
                    raise _as_error(exc) from exc

            _named(check, fn)
            mode = "before" if pre else "after"
            return _field_validator(*fields, mode=mode)(classmethod(check))  # type: ignore[arg-type]

        return decorate

    _V1_PRE = "__ledgerflow_v1_pre_root__"

    def _pre_root_validators(cls: Any) -> list[tuple[Any, Callable[..., Any]]]:
        """(wrapper, v1 function) of each pre root validator of `cls`, in definition order
        (a base class's first)."""
        chain = []
        for decorator in cls.__pydantic_decorators__.model_validators.values():
            wrapper = getattr(decorator.func, "__func__", decorator.func)
            original = getattr(wrapper, _V1_PRE, None)
            if original is not None:
                chain.append((wrapper, original))
        return chain

    def root_validator(  # type: ignore[no-redef]
        _fn: Callable[..., Any] | None = None,
        *,
        pre: bool = False,
        skip_on_failure: bool = False,
        allow_reuse: bool = False,
    ) -> Any:
        """pydantic v1's `@root_validator` on a v2 model: `(cls, values) -> values`.

        A post validator runs only when every field validated (v2 never calls an after model
        validator otherwise, which is v1's `skip_on_failure=True`)."""

        def decorate(fn: Callable[..., Any]) -> Any:
            if pre:

                def before(cls: Any, data: Any) -> Any:
                    # v2 runs before-validators last defined first; v1 ran pre root validators
                    # in the order they were defined (a later one may rely on an earlier one's
                    # work). The last defined runs them all, in v1's order; the others pass.
                    chain = _pre_root_validators(cls)
                    if not isinstance(data, dict) or chain[-1][0] is not before:
                        return data
                    for _, each in chain:
                        try:
                            data = each(cls, dict(data))
                        except ValueError as exc:
                            raise _as_error(exc) from exc
                    return data

                _named(before, fn)
                before.__dict__[_V1_PRE] = fn
                return _model_validator(mode="before")(classmethod(before))  # type: ignore[arg-type]

            def after(self: Any) -> Any:
                names = list(type(self).model_fields)
                values = {name: getattr(self, name) for name in names}
                try:
                    result = fn(type(self), dict(values))
                except ValueError as exc:
                    raise _as_error(exc) from exc
                for name in names:
                    if name in result and result[name] is not values[name]:
                        object.__setattr__(self, name, result[name])
                return self

            _named(after, fn)
            return _model_validator(mode="after")(after)

        return decorate if _fn is None else decorate(_fn)


def model_validate(cls: type[M], data: Any) -> M:
    """`cls` built and validated from `data` (v1 `parse_obj`, v2 `model_validate`)."""
    if PREFECT_3:
        return cls.model_validate(data)  # type: ignore[attr-defined,no-any-return]
    return cls.parse_obj(data)  # type: ignore[attr-defined,no-any-return]


def model_dump(model: Any, **kwargs: Any) -> dict[str, Any]:
    """The model's fields as a dict (v1 `dict`, v2 `model_dump`)."""
    if PREFECT_3:
        return model.model_dump(**kwargs)  # type: ignore[no-any-return]
    return model.dict(**kwargs)  # type: ignore[no-any-return]


def model_copy(model: M, update: dict[str, Any]) -> M:
    """A copy of `model` with `update` applied, unvalidated (v1 `copy`, v2 `model_copy`)."""
    if PREFECT_3:
        return model.model_copy(update=update)  # type: ignore[attr-defined,no-any-return]
    return model.copy(update=update)  # type: ignore[attr-defined,no-any-return]


def field_aliases(cls: type[Any]) -> dict[str, str]:
    """Each field's name and the alias its data is given under (its name when it has none)."""
    if PREFECT_3:
        return {name: f.alias or name for name, f in cls.model_fields.items()}
    return {f.name: f.alias for f in cls.__fields__.values()}


def uncached() -> dict[str, Any]:
    """Task options that turn result caching off: `@task(..., **uncached())`."""
    if not PREFECT_3:
        return {}  # Prefect 2 caches a task only when it is given a cache_key_fn
    from prefect.cache_policies import NO_CACHE

    return {"cache_policy": NO_CACHE}


async def state_result(state: Any, *, raise_on_failure: bool = True) -> Any:
    """The result a final state holds, read in async code (Prefect 3 has no `fetch`)."""
    if PREFECT_3:
        return await state.aresult(raise_on_failure=raise_on_failure)
    return await state.result(raise_on_failure=raise_on_failure, fetch=True)


def state_result_sync(state: Any, *, raise_on_failure: bool = True) -> Any:
    """The result a final state holds, read outside any event loop."""
    if PREFECT_3:
        return state.result(raise_on_failure=raise_on_failure, _sync=True)
    return state.result(raise_on_failure=raise_on_failure, fetch=True)


async def load_block(cls: type[M], name: str, client: Any = None) -> M:
    """`cls.load(name)` from async code on either Prefect, through `client` when one is given.

    Prefect 2.20's `Block.load` accepts a client and drops it: it reads the document through a
    client of its own (`load` calls `cls._get_block_document(name)` without it), and each new
    client builds its TLS context and may start the in-process API again. Here the given client
    reads the document, and the rest is that `load`'s own body, its error included."""
    block: Any = cls
    if client is None:
        return cast(M, await block.load(name))
    if PREFECT_3:
        return cast(M, await block.aload(name, client=client))
    document, document_name = await block._get_block_document(name, client=client)
    try:
        return cast(M, block._from_block_document(document))
    except ValidationError as exc:
        raise RuntimeError(
            f"Unable to load {document_name!r} of block type {block._block_type_slug!r} due "
            "to failed validation. To load without validation, try loading again with "
            "`validate=False`."
        ) from exc


async def create_table_artifact(**kwargs: Any) -> Any:
    """Prefect's table artifact, created from async code on either Prefect."""
    if PREFECT_3:
        from prefect.artifacts import acreate_table_artifact  # type: ignore[attr-defined, unused-ignore]

        return await acreate_table_artifact(**kwargs)
    from prefect.artifacts import create_table_artifact as create

    return await cast("Awaitable[Any]", create(**kwargs))  # Prefect 3 types it sync-or-async


async def create_markdown_artifact(**kwargs: Any) -> Any:
    """Prefect's markdown artifact, created from async code on either Prefect."""
    if PREFECT_3:
        from prefect.artifacts import acreate_markdown_artifact  # type: ignore[attr-defined, unused-ignore]

        return await acreate_markdown_artifact(**kwargs)
    from prefect.artifacts import create_markdown_artifact as create

    return await cast("Awaitable[Any]", create(**kwargs))  # Prefect 3 types it sync-or-async


def cron_is_valid(expression: str) -> bool:
    """Whether Prefect's scheduler accepts `expression` (the croniter it schedules with: a
    dependency of Prefect 2, vendored inside Prefect 3)."""
    is_valid: Callable[[str], Any]
    if PREFECT_3:
        from prefect._vendor.croniter.croniter import croniter as vendored

        is_valid = vendored.is_valid
    else:
        from croniter import croniter

        is_valid = croniter.is_valid
    return bool(is_valid(expression))


def cron_schedule(cron: str, timezone: str) -> Any:
    """The `schedule=` of `Flow.serve` and `Flow.to_deployment`: a CronSchedule on either Prefect
    (Prefect 3 still takes one there, though it types the parameter as its own `Schedule`)."""
    from prefect.client.schemas.schedules import CronSchedule

    return CronSchedule(cron=cron, timezone=timezone)


def module_path_entrypoint() -> Any:
    """`EntrypointType.MODULE_PATH`, for `Flow.to_deployment(entrypoint_type=...)`: Prefect 2
    defines the enum in `prefect.deployments.runner`, Prefect 3 in `prefect.types.entrypoint`."""
    where = "prefect.types.entrypoint" if PREFECT_3 else "prefect.deployments.runner"
    return importlib.import_module(where).EntrypointType.MODULE_PATH


def sync_compatible(fn: F) -> F:
    """Prefect's `sync_compatible`: the async `fn`, also callable from sync code (it then runs to
    completion). Typed as `fn` itself, as Prefect 2 types it; Prefect 3 types the result as the
    value or a coroutine of it, which async callers could not use without a cast."""
    from prefect.utilities.asyncutils import sync_compatible as dual

    wrapped: Any = dual(fn)
    return cast(F, wrapped)


async def task_state(
    task: Task[P, Coroutine[Any, Any, Any]], *args: P.args, **kwargs: P.kwargs
) -> State[Any]:
    """The final state of a run of the async `task` (`return_state=True`: a failure is a Failed
    state, not raised). Both Prefects type that call as returning the State itself, though from
    async code it returns a coroutine of it."""
    call: Any = task(*args, return_state=True, **kwargs)
    state: State[Any] = await call
    return state


def prefect_test_harness() -> AbstractContextManager[None]:
    """Prefect's temporary test API. Prefect 3 starts it as a server process and gives up after
    30 s by default, too short on a loaded machine: allow five minutes."""
    from prefect.testing.utilities import prefect_test_harness as harness

    if PREFECT_3:
        return harness(server_startup_timeout=300)  # type: ignore[call-arg, unused-ignore]
    return harness()


# What ledgerflow gives Prefect 3's ephemeral API unless the user chose otherwise (see
# ephemeral_start); processes that start it outside the CLI (the chaos harness) take the same.
EPHEMERAL_DEFAULTS: dict[str, int | bool] = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": 300,
    "PREFECT_SERVER_ANALYTICS_ENABLED": False,
}


def ephemeral_environment() -> dict[str, str]:
    """EPHEMERAL_DEFAULTS as environment variables, for processes to inherit."""
    return {name: str(value).lower() for name, value in EPHEMERAL_DEFAULTS.items()}


def ephemeral_start() -> AbstractContextManager[Any]:
    """Settings for starting Prefect's ephemeral API, each unless the user chose it.

    Prefect 3 runs that API as a server process of its own and gives it 20 s to answer; commands
    started together on a loaded machine queue for it (ledgerflow.prefect_home), so allow five
    minutes. That process also runs the server's telemetry heartbeat, which Prefect 2's
    in-process API never did: on a fresh home it races the migration for the database ("database
    is locked"), offline it fails, and either way its ERROR and traceback land on the terminal of
    a command that promises one line. The process inherits these settings when it starts."""
    if not PREFECT_3:
        return nullcontext()
    import prefect.settings
    from prefect.context import get_settings_context
    from prefect.settings import temporary_settings

    profile = get_settings_context().profile.settings
    chosen = {getattr(prefect.settings, name): value for name, value in EPHEMERAL_DEFAULTS.items()}
    return temporary_settings(  # type: ignore[no-any-return, unused-ignore]
        {s: v for s, v in chosen.items() if s.name not in os.environ and s not in profile}
    )


async def flush_run_logs() -> None:
    """Send the logs this process has queued to the API. Prefect 2 has sent them when a flow
    run returns; Prefect 3 ships them in the background."""
    if PREFECT_3:
        from prefect.logging.handlers import APILogHandler

        await APILogHandler.aflush()  # type: ignore[no-untyped-call, unused-ignore]
