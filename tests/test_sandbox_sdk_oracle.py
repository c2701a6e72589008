"""Codat's official Python SDKs call a real `codat-relay sandbox` process and read every answer.

`codat-platform` and `codat-sync-for-commerce` (PyPI, versions locked in requirements-dev.lock) are Codat's
generated clients: each call below goes over HTTP to the sandbox and the SDK deserialises the answer into
its own models (raising on a shape it does not know); error answers must become the SDK's typed
`ErrorMessage`. The push endpoints (`/data/companies/{companyId}/sync/commerce-*`) and the `meta` dataset
path are in no current SDK (Sync for Commerce v1 push left the spec in 2023): their oracle is the 2023 push
spec (tests/test_sandbox_spec_oracle.py), as the README says.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from codat_platform import CodatPlatform
from codat_platform.models import errors as platform_errors
from codat_platform.models.shared import Security as PlatformSecurity
from codat_sync_for_commerce import CodatSyncCommerce
from codat_sync_for_commerce.models import errors as commerce_errors
from codat_sync_for_commerce.models import shared as commerce

from tests.integration.harness import free_port, start, stop, wait_http

API_KEY = "sdk-oracle-key-0c1d"
AUTH = "Basic " + base64.b64encode(API_KEY.encode()).decode()


class Oracle:
    """Both SDKs pointed at one sandbox process, over one HTTP client."""

    def __init__(self, base: str, http: httpx.Client) -> None:
        self.base, self.http = base, http
        self.platform = CodatPlatform(security=PlatformSecurity(auth_header=AUTH), server_url=base, client=http)
        self.commerce = CodatSyncCommerce(security=commerce.Security(auth_header=AUTH), server_url=base, client=http,
                                          retry_config=None)  # fmt: skip

    def push(self, company_id: str, records: list[dict[str, Any]]) -> str:
        """No SDK has the push endpoint: plain HTTP, as the relay does."""
        answer = self.http.post(f"{self.base}/data/companies/{company_id}/sync/commerce-orders",
                                json={"orders": records}, headers={"Authorization": AUTH})  # fmt: skip
        answer.raise_for_status()
        return str(answer.json()["datasetId"])


def _value(member: Any) -> Any:
    """An SDK enum member's wire value (the SDKs wrap statuses in their own enums)."""
    return getattr(member, "value", member)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    port = free_port()
    log: Path = tmp_path_factory.mktemp("sdk-oracle") / "sandbox.log"
    proc = start(["sandbox", "--port", str(port), "--pace-seconds", "0", "--api-key", API_KEY], {}, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/_sandbox/config", proc)
        with httpx.Client(timeout=10) as http:
            yield Oracle(base, http)
    finally:
        stop(proc)


def test_platform_sdk_reads_companies_connections_and_datasets(oracle: Oracle) -> None:
    """codat-platform: create-company, get-company, get-connection, get-pull-operation, delete-connection."""
    p = oracle.platform
    company = p.companies.create(request={"name": "Toft stores", "description": "SDK oracle"})
    assert company.name == "Toft stores" and uuid.UUID(company.id)
    fetched = p.companies.get(request={"company_id": company.id})
    assert fetched.id == company.id and len(fetched.data_connections or []) == 2
    connection_id = next(c.id for c in fetched.data_connections or [] if c.source_type == "Commerce")
    connection = p.connections.get(request={"company_id": company.id, "connection_id": connection_id})
    assert connection.id == connection_id and _value(connection.status) == "Linked"
    dataset_id = oracle.push(company.id, [{"id": "o-1", "totalAmount": 5.0}])
    dataset = p.refresh_data.get_pull_operation(request={"company_id": company.id, "dataset_id": dataset_id})
    assert dataset.id == dataset_id and _value(dataset.status) == "Complete" and dataset.is_completed
    p.connections.delete(request={"company_id": company.id, "connection_id": connection_id})


def test_platform_sdk_reads_codats_error_answers(oracle: Oracle) -> None:
    """A 404 and a 401 of the sandbox become the SDK's typed ErrorMessage with Codat's fields."""
    p = oracle.platform
    ghost = str(uuid.uuid4())
    with pytest.raises(platform_errors.ErrorMessage) as missing:
        p.companies.get(request={"company_id": ghost})
    assert missing.value.data.status_code == 404 and ghost in (missing.value.data.error or "")
    wrong = CodatPlatform(security=PlatformSecurity(auth_header="Basic d3Jvbmc="), server_url=oracle.base,
                          client=oracle.http)  # fmt: skip
    with pytest.raises(platform_errors.ErrorMessage) as refused:
        wrong.companies.create(request={"name": "Nobody"})
    assert refused.value.data.status_code == 401


def test_sync_for_commerce_sdk_starts_syncs_and_reads_their_status(oracle: Oracle) -> None:
    """codat-sync-for-commerce: create-company, request-sync, -for-date-range, and every sync status read."""
    s = oracle.commerce
    company = s.advanced_controls.create_company(request={"name": "Toft stores"})
    assert company is not None and uuid.UUID(company.id)
    oracle.push(company.id, [{"id": "o-1", "totalAmount": 5.0}])  # undated: in any range
    latest = s.sync.request(request={"company_id": company.id,
                                     "sync_to_latest_args": {"sync_to": "2030-01-01T00:00:00Z"}})  # fmt: skip
    assert latest is not None and latest.commerce_sync_id and latest.sync_date_range_utc is not None
    assert latest.sync_status_code == 2000
    span = {"date_range": {"start": "2025-01-01T00:00:00Z", "finish": "2025-02-01T00:00:00Z"}}
    historic = s.sync.request_for_date_range(request={"company_id": company.id, "sync_range": span})
    assert historic is not None and historic.sync_date_range_utc is not None
    status = s.sync.get_status(request={"company_id": company.id})
    assert status is not None and status.company_id == company.id
    newest = s.sync.get_latest_sync(request={"company_id": company.id})
    assert newest is not None and newest.sync_id
    listed = s.sync.list(request={"company_id": company.id})
    assert listed is not None and [x.sync_id for x in listed][-1] == newest.sync_id
    by_id = s.sync.get(request={"company_id": company.id, "sync_id": newest.sync_id})
    assert by_id is not None and by_id.sync_id == newest.sync_id
    succeeded = s.sync.get_last_successful_sync(request={"company_id": company.id})
    assert succeeded is not None and succeeded.sync_status_code in (2000, 2040)


def test_sync_for_commerce_sdk_reads_and_sets_the_sync_configuration(oracle: Oracle) -> None:
    """codat-sync-for-commerce: get-configuration deserialises the schedule codat-relay reads (syncHour,
    timeZone, selectedFrequency); set-configuration, which the SDK sends with no body, answers it too."""
    s = oracle.commerce
    company = s.advanced_controls.create_company(request={"name": "Toft stores"})
    assert company is not None
    config = s.advanced_controls.get_configuration(request={"company_id": company.id})
    assert config is not None and config.company_id == company.id and config.schedule is not None
    assert (config.schedule.selected_frequency, config.schedule.sync_hour, config.schedule.time_zone) == (
        commerce.SyncFrequency.DAILY, 0, "Europe/London")
    same = s.advanced_controls.set_configuration(request={"company_id": company.id})
    assert same is not None and same.schedule is not None and same.schedule.sync_hour == 0


def test_sync_for_commerce_sdk_reads_codats_error_answers(oracle: Oracle) -> None:
    """An unknown company's sync status (404) and a bad range (400) become the SDK's ErrorMessage."""
    s = oracle.commerce
    with pytest.raises(commerce_errors.ErrorMessage) as missing:
        s.sync.get_status(request={"company_id": str(uuid.uuid4())})
    assert missing.value.data.status_code == 404
    company = s.advanced_controls.create_company(request={"name": "Toft"})
    assert company is not None
    backwards = {"date_range": {"start": "2025-02-01T00:00:00Z", "finish": "2025-01-01T00:00:00Z"}}
    with pytest.raises(commerce_errors.ErrorMessage) as refused:
        s.sync.request_for_date_range(request={"company_id": company.id, "sync_range": backwards})
    assert refused.value.data.status_code == 400
