"""The deployment files stay consistent with the code: compose validates, and every variable it sets is a setting."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ml_backend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
#: botocore's own variables (endpoint, credentials, region of the S3 model store): not settings of ours
AWS_ENV = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


def test_compose_sets_only_known_settings_and_shares_the_model_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "backend", "worker", "label-studio"} <= set(services)
    known = {name.upper() for name in Settings.model_fields} | AWS_ENV
    for name in ("backend", "worker"):
        assert set(services[name]["environment"]) <= known, set(services[name]["environment"]) - known
        assert "models:/data" in services[name]["volumes"]  # web and worker read the same registry
    ls_env = services["label-studio"]["environment"]
    assert ls_env["ML_BLOCK_LOCAL_IP"] == "false" and ls_env["SSRF_PROTECTION_ENABLED"] == "false"
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.mark.skipif(_compose_command() is None, reason="no docker compose client installed (.ci/run installs one)")
@pytest.mark.parametrize("profile", [[], ["--profile", "s3"]], ids=["default", "s3"])
def test_docker_compose_config_validates(profile):
    cmd = _compose_command()
    result = subprocess.run(
        [*cmd, "-f", str(ROOT / "docker-compose.yml"), *profile, "config", "-q"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_s3_profile_runs_minio_with_a_bucket_and_the_backend_reads_the_store_from_the_environment():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("minio", "minio-bucket"):  # only with `--profile s3`: the default deployment stays a volume
        assert services[name]["profiles"] == ["s3"]
    assert "mc mb --ignore-existing store/models" in services["minio-bucket"]["command"][0]
    for name in ("backend", "worker"):
        env = services[name]["environment"]
        assert env["MODEL_STORE_URL"] == "${MODEL_STORE_URL:-}"  # empty: the store is DATA_DIR
        assert env["AWS_ENDPOINT_URL"] == "${AWS_ENDPOINT_URL-http://minio:9000}"
        # the backend's credentials are MinIO's own, whichever the admin sets
        assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    # the image can use it: s3fs comes with the s3 extra
    assert 'pip install ".[s3]"' in (ROOT / "Dockerfile").read_text()


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert not missing, f"settings missing from the README's configuration table: {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_image_is_cpu_torch_all_in_one_by_default_and_the_build_context_small():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in dockerfile and '--index-url "$TORCH_INDEX_URL"' in dockerfile
    cmd = [line for line in dockerfile.splitlines() if line.startswith("CMD ")][-1]
    assert '"serve"' in cmd and "--no-worker" not in cmd  # alone, the container runs web + worker + its Redis
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", ".git", "tests", "benchmarks", ".cache"} <= set(ignored)
    assert "https://download.pytorch.org/whl/cpu" in (ROOT / "Makefile").read_text()


def test_compose_builds_one_image_and_the_worker_has_no_web_healthcheck():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "build" in services["backend"] and "build" not in services["worker"]
    assert services["worker"]["image"] == services["backend"]["image"]
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert "--no-worker" in services["backend"]["command"] and "REDIS_URL" in services["backend"]["environment"]


def test_readme_states_prerequisites_costs_and_the_cpu_index():
    readme = (ROOT / "README.md").read_text()
    assert "6379" in readme and "https://download.pytorch.org/whl/cpu" in readme
    assert "## Security and limits" in readme and "GB" in readme
