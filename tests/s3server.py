"""A real S3-compatible server for tests: moto's standalone server in a thread on a free port.

Clients talk to it over real HTTP with real s3fs and boto3 (nothing of ours is replaced); it keeps objects in
memory and accepts any credentials.

    with S3Server() as s3:
        s3.create_bucket("models")
        s3.env          # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for a client or a worker process
"""

from __future__ import annotations

from typing import Any

import boto3
from moto.server import ThreadedMotoServer


class S3Server:
    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> S3Server:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables botocore (and so s3fs) reads: what a deployment sets for its MinIO."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "test-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="test-key",
            aws_secret_access_key="test-secret",
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)
