"""Request bodies Label Studio sends, validated so that a malformed payload is a clear 4xx, never a 500."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ml_backend.labelstudio.webhooks import MAX_ID, project_id_of_key, valid_id

#: a project id in a URL path or query: bounded like LS's database ids, so a 300-digit id is a 422, not a 500
ProjectId = Annotated[int, Field(ge=1, le=MAX_ID)]


class _LSBody(BaseModel):
    model_config = ConfigDict(extra="allow")


class SetupRequest(_LSBody):
    project: str = Field(description='"<id>.<created timestamp>" as LS sends it, or a bare id')
    schema_: str = Field(alias="schema", description="the project's label config")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None

    @field_validator("project", mode="before")
    @classmethod
    def _project_key(cls, value: Any) -> str:
        value = str(value)
        if project_id_of_key(value) is None:
            raise ValueError("project must look like '<id>' or '<id>.<timestamp>'")
        return value


class PredictRequest(_LSBody):
    tasks: list[Any] = Field(description="LS tasks (id, data, ...); one prediction list per task, same order")
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None

    def project_id(self) -> int | None:
        """The project id from ``project``, else from the first task's ``project`` field."""
        if self.project is not None and project_id_of_key(self.project) is not None:
            return project_id_of_key(self.project)
        for task in self.tasks:
            if isinstance(task, dict) and valid_id(task.get("project")) is not None:
                return task["project"]
        return None
