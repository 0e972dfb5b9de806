"""ledgerflow.compat keeps pydantic v1's validator contract on whichever Prefect is installed.

The block modules are written against pydantic.v1 (Prefect 2); on Prefect 3 the same code runs
on pydantic v2 through compat's shims. These run on both (`make test`, `make test-prefect3`)."""

from __future__ import annotations

from typing import Any

import pytest
from ledgerflow.compat import (
    PREFECT_3,
    PREFECT_MAJOR,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_aliases,
    model_copy,
    model_dump,
    model_validate,
    root_validator,
    uncached,
    validator,
)


class Inner(BaseModel):
    label: str | None = None


def check_even(value: int) -> int:
    """A plain check shared between models, with no `cls`."""
    if value % 2:
        raise ValueError(f"{value} is odd")
    return value


class Model(BaseModel):
    name: str = Field(..., description="a name")
    tags: list[str] | None = Field(None)
    low: int = 0
    high: int = 10
    token: SecretStr | None = None
    inner: Inner = Field(default_factory=Inner)
    step: int = 2

    _step = validator("step", allow_reuse=True)(check_even)

    @validator("name")
    def _name(cls, v: str, field: Any) -> str:
        if not v.isidentifier():
            raise ValueError(f"{field.name}={v!r} must be an identifier")
        return v

    @validator("tags", each_item=True)
    def _tag(cls, v: str) -> str:
        if v != v.lower():
            raise ValueError(f"tag {v!r} must be lowercase")
        return v

    @validator("high")
    def _high(cls, v: int, values: dict[str, Any]) -> int:
        if "low" in values and v < values["low"]:
            raise ValueError(f"high={v} is below low={values['low']}")
        return v

    @root_validator(skip_on_failure=True)
    def _whole(cls, values: dict[str, Any]) -> dict[str, Any]:
        if values["name"] == "forbidden":
            raise ValueError("name 'forbidden' is reserved")
        inner: Inner = values["inner"]
        if inner.label is None:
            values["inner"] = model_copy(inner, {"label": values["name"]})
        return values


def messages(exc: ValidationError) -> list[tuple[tuple[Any, ...], str]]:
    return [(tuple(e["loc"]), e["msg"]) for e in exc.errors()]


def test_the_installed_prefect_is_the_one_compat_reports() -> None:
    import prefect

    assert int(prefect.__version__.split(".")[0]) == PREFECT_MAJOR
    assert (PREFECT_MAJOR >= 3) is PREFECT_3


def test_a_valid_model_runs_every_validator_and_the_root_validator_fills_in() -> None:
    m = Model(name="web", tags=["a", "b"], low=1, high=2, token="s3cret")
    assert m.inner.label == "web"
    assert m.tags == ["a", "b"]
    assert m.token is not None and m.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(m)
    assert Model(name="web").tags is None  # each_item validators never see a None list


def test_a_validator_error_is_its_own_sentence_naming_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        Model(name="not valid")
    assert messages(info.value) == [(("name",), "name='not valid' must be an identifier")]


def test_each_item_validates_every_element() -> None:
    with pytest.raises(ValidationError) as info:
        Model(name="web", tags=["ok", "Bad"])
    [(loc, msg)] = messages(info.value)
    assert loc[0] == "tags" and msg == "tag 'Bad' must be lowercase"


def test_a_shared_plain_function_validates_the_value() -> None:
    assert Model(name="web", step=4).step == 4
    with pytest.raises(ValidationError) as info:
        Model(name="web", step=3)
    assert messages(info.value) == [(("step",), "3 is odd")]


def test_a_validator_sees_the_fields_validated_before_it() -> None:
    with pytest.raises(ValidationError) as info:
        Model(name="web", low=5, high=1)
    assert messages(info.value) == [(("high",), "high=1 is below low=5")]


def test_the_root_validator_runs_only_when_every_field_is_valid() -> None:
    with pytest.raises(ValidationError) as info:
        Model(name="forbidden")
    [(_, msg)] = messages(info.value)
    assert msg == "name 'forbidden' is reserved"
    with pytest.raises(ValidationError) as info:
        Model(name="forbidden", low=5, high=1)  # a field failed: the root check is skipped
    assert [m for _, m in messages(info.value)] == ["high=1 is below low=5"]


def test_dump_and_validate_round_trip() -> None:
    m = Model(name="web", tags=["a"], token="s3cret")
    again = model_validate(Model, model_dump(m))
    assert again == m
    assert again.token is not None and again.token.get_secret_value() == "s3cret"


class Renamed(BaseModel):
    """Pre root validators that depend on each other's order, as PipelineConfig's do (drop a
    retired key, then refuse unknown ones), and one inherited from a base."""

    kept: int = 0
    seen: list[str] = Field(default_factory=list)

    @root_validator(pre=True)
    def _first(cls, values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if k != "retired"} | {"seen": ["first"]}

    @root_validator(pre=True)
    def _second(cls, values: dict[str, Any]) -> dict[str, Any]:
        unknown = set(values) - set(field_aliases(cls))
        if unknown:
            raise ValueError(f"unknown: {sorted(unknown)}")
        return {**values, "seen": [*values["seen"], "second"]}


class MoreRenamed(Renamed):
    extra: int = 0

    @root_validator(pre=True)
    def _third(cls, values: dict[str, Any]) -> dict[str, Any]:
        return {**values, "seen": [*values["seen"], "third"]}


def test_pre_root_validators_run_in_the_order_they_are_defined() -> None:
    assert Renamed(kept=1, retired=2).seen == ["first", "second"]  # type: ignore[call-arg]
    assert MoreRenamed(retired=2, extra=1).seen == ["first", "second", "third"]  # type: ignore[call-arg]
    with pytest.raises(ValidationError) as info:
        Renamed(kept=1, typo=2)  # type: ignore[call-arg]
    assert [m for _, m in messages(info.value)] == ["unknown: ['typo']"]


def test_field_aliases_name_every_field() -> None:
    assert field_aliases(Renamed) == {"kept": "kept", "seen": "seen"}


def test_side_effecting_tasks_are_never_cached() -> None:
    options = uncached()
    if PREFECT_3:
        from prefect.cache_policies import NO_CACHE

        assert options == {"cache_policy": NO_CACHE}
    else:
        assert options == {}
    from ledgerflow.tasks.store_and_validate import claim_window

    if PREFECT_3:
        from prefect.cache_policies import NO_CACHE

        assert claim_window.cache_policy is NO_CACHE
    else:
        assert claim_window.cache_key_fn is None
