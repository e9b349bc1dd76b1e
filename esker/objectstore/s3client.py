"""boto3 S3 clients for RGW: path-style addressing, SigV4, bounded timeouts, few retries."""

from __future__ import annotations

import boto3
from botocore.config import Config


def s3_client(endpoint: str, access_key: str, secret_key: str, region: str = "default", timeout: float = 10.0,
              retries: int = 1):
    """A boto3 S3 client for RGW: path-style addressing, bounded timeouts, few retries."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": retries, "mode": "standard"},
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
