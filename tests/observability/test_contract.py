"""The gateway publishes the broker contract of its own deployment."""

from __future__ import annotations

import httpx
import pytest

from shared.asyncapi import asyncapi_document
from shared.topology import Topology
from tests.observability.conftest import ObservedPlatform

pytestmark = pytest.mark.e2e


def test_gateway_serves_the_asyncapi_document(observed: ObservedPlatform) -> None:
    response = httpx.get(f"{observed.gateway.url}/asyncapi.json", timeout=10)
    assert response.status_code == 200
    assert response.json() == asyncapi_document(Topology(observed.infra.namespace))
    exchange = response.json()["channels"]["message.sent"]["bindings"]["amqp"]["exchange"]
    assert exchange["name"] == f"{observed.infra.namespace}.events"
