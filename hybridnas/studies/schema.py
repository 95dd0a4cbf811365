"""The JSON schema of a study file, as written (``hybridnas config schema``).

``StudyConfig.model_json_schema()`` alone describes the *parsed* values: a searched dimension
as an array, a ratio as an object. A study file is looser than that (a dimension may be one
value or an array, a ratio is the string ``"1:5"``), because ``config.py`` parses those forms
in "before" validators. :class:`_StudyFileSchema` renders each of those validators as the
input it accepts, so an editor or ``jsonschema`` checks a TOML file (parsed) as written.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from hybridnas.studies.config import Ratio, SpaceConfig, Split, StudyConfig, _as_tuple

__all__ = ["study_schema"]

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
RATIO_TEXT: JsonSchemaValue = {"type": "string", "pattern": r"^\s*\d+\s*:\s*\d+\s*$",
                               "description": "attention:mamba, e.g. 1:5"}
SPLIT_TEXT: JsonSchemaValue = {"anyOf": [RATIO_TEXT, {"type": "number", "exclusiveMinimum": 0,
                                                      "exclusiveMaximum": 1}]}


def _one_or_many(parsed: JsonSchemaValue) -> JsonSchemaValue:
    """A dimension given as one choice or an array of choices (``config._as_tuple``)."""
    items = parsed.get("items")
    return {"anyOf": [items, parsed]} if items is not None else parsed


class _StudyFileSchema(GenerateJsonSchema):
    """Pydantic's generator, with config.py's "before" validators shown as what they accept."""

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        function = schema["function"]["function"]
        if function == Ratio.parse:
            return RATIO_TEXT
        if function == Split.parse:
            return SPLIT_TEXT
        parsed = super().function_before_schema(schema)
        if function is _as_tuple:
            return _one_or_many(parsed)
        if function == SpaceConfig._fractions:  # a split or a list of them (it calls _as_tuple)
            return {"anyOf": [SPLIT_TEXT, {"type": "array", "items": SPLIT_TEXT, "minItems": 1}]}
        return parsed


def study_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) a study file, parsed from TOML, satisfies. Passing it
    is necessary, not sufficient: cross-field rules (rungs inside the trainer's stable phase,
    n_attn within the depth, ...) are checked only when the study loads."""
    schema = StudyConfig.model_json_schema(mode="validation", schema_generator=_StudyFileSchema)
    return {"$schema": SCHEMA_URI, **schema}
