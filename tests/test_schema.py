"""runner.schema: typed options, one line per bad key, defaults from the schema alone."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field

from runner.errors import RunnerError
from runner.schema import (
    Options,
    combined,
    config_node,
    describe,
    options,
    parse,
    problems,
    tagged,
    tags,
)


class Loud(Options):
    volume: int = Field(3, ge=1, le=10, description="how loud")
    voice: Literal["low", "high"] = Field("low", description="pitch")
    seed: int = Field(0, ge=0, description="a draw", **tags(follows="seed", seed=True))
    cache: str | None = Field(None, description="where", **tags(trains=False))


class Meta(Options):
    name: str = Field(min_length=1, description="its name")


def test_each_bad_value_is_one_line_naming_key_value_and_what_is_allowed():
    lines = problems({"volume": 0, "voice": "mid", "volum": 3}, Loud, "shout")
    assert "shout.volume=0: expected an integer in [1, 10]" in lines
    assert "shout.voice='mid': expected one of low, high" in lines
    assert "shout.volum: unknown key; did you mean shout.volume?" in lines
    assert len(lines) == 3


def test_parse_raises_one_runner_error_and_accepts_good_values():
    assert parse({"volume": 5}, Loud, "shout").volume == 5
    with pytest.raises(RunnerError, match=r"^bad config value: shout.volume='5': expected"):
        parse({"volume": "5"}, Loud, "shout")  # strict: no silent type coercion


def test_a_function_plugin_gets_its_defaults_from_the_schema_only():
    @options(Loud)
    def shout(text, *, volume, voice, seed, cache):
        return text, volume, voice

    assert shout("hi") == ("hi", 3, "low")
    assert shout("hi", volume=7) == ("hi", 7, "low")
    assert shout.Options is Loud


def test_a_config_node_follows_other_keys_and_marks_required_ones():
    node = config_node(combined(Meta, Loud))
    assert node["name"] == "???" and node["seed"] == "${seed}" and node["volume"] == 3


def test_tags_tell_the_core_what_it_needs_without_naming_plugin_keys():
    assert tagged(Loud, "seed") == ["seed"]
    assert "cache" not in tagged(Loud, "trains") and "volume" in tagged(Loud, "trains")


def test_a_plugin_without_options_of_its_own_combines_with_the_meta_schema():
    assert combined(Meta, Options) is Meta  # a RecipeBase subclass that declares no Options


def test_describe_says_what_a_field_accepts_in_words():
    assert describe(Loud.model_fields["volume"].annotation) == "an integer"
    assert describe(list[int]) == "a list of (integer)"
    assert describe(bool | None) == "true or false or null"
