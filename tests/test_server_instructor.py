"""`instructor` getting validated pydantic objects from the server, through response_format
json_schema and through a forced tool call: the way structured-output apps use local servers.
instructor validates with pydantic itself (the reference); retries are off, so the first answer
must already validate.
"""
from __future__ import annotations

import pydantic
import pytest

from smollm2_server_fixtures import model, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    age: int = pydantic.Field(ge=0, le=150)
    hobbies: list[str] = pydantic.Field(max_length=3)


@pytest.mark.parametrize("mode", ["JSON_SCHEMA", "TOOLS"])
def test_instructor_gets_a_validated_object(server, mode):
    instructor = pytest.importorskip("instructor")
    client = instructor.from_openai(server.openai_client(), mode=getattr(instructor.Mode, mode))
    person = client.chat.completions.create(
        model="smollm2-test", response_model=Person, max_retries=0, max_tokens=120, temperature=0,
        messages=[{"role": "user", "content": "Alice is 30 and likes chess and tennis. Extract her details."}])
    assert isinstance(person, Person)
    Person.model_validate(person.model_dump())
