"""The harness works: a real Label Studio starts, accepts the token and stores projects and tasks."""

from __future__ import annotations

import pytest
import requests
from label_studio_sdk import ImportApiRequest, RoleBasedTask

from tests.e2e.label_studio import LabelStudioServer

pytestmark = pytest.mark.e2e

BRUSH_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Level 1" background="#f0a000"/>
    <Label value="Level 2" background="#d00000"/>
  </BrushLabels>
</View>"""


def test_version_endpoint_accepts_the_token(label_studio: LabelStudioServer) -> None:
    version = label_studio.api("GET", "/api/version").json()
    assert version["release"] == "1.23.2"


def test_requests_without_the_token_are_rejected(label_studio: LabelStudioServer) -> None:
    response = requests.get(f"{label_studio.url}/api/projects/", timeout=10)
    assert response.status_code == 401


def test_sdk_creates_a_project_and_imports_a_task(label_studio: LabelStudioServer) -> None:
    client = label_studio.sdk()
    project = client.projects.create(title="harness smoke", label_config=BRUSH_CONFIG)
    assert project.id is not None

    image_url = "https://example.com/images/dog.png"
    client.projects.import_tasks(id=project.id, request=[ImportApiRequest(data={"image": image_url})])

    tasks: list[RoleBasedTask] = list(client.tasks.list(project=project.id))
    assert [task.data["image"] for task in tasks] == [image_url]
    stored_config = client.projects.get(id=project.id).label_config
    assert stored_config is not None
    assert stored_config.strip() == BRUSH_CONFIG.strip()
