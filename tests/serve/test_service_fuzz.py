"""schemathesis against the multi-tenant service, with a tenant's key and without one: never a
5xx, never a 2xx without a key, and with a key every answer is one the spec declares."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from hafen.serve import create_service


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    app = create_service(tmp_path_factory.mktemp("fuzz") / "home", refresh=0, max_body=100_000)
    key = app.tenants.add("acme")
    auth = {"Authorization": f"Bearer {key}"}
    return app, auth, schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)


@pytest.mark.slow
@pytest.mark.parametrize("with_key", [True, False])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_service_fuzzed_with_and_without_keys(fuzzed, with_key, mode):
    _app, auth, schema = fuzzed
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/forecasts", "/v1/{table}", "/healthz"}
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def run(case):
            for name in [h for h in case.headers or {} if h.lower() == "authorization"]:
                del case.headers[name]  # the generated credentials are replaced: ours, or none
            response = case.call(headers=auth if with_key else None)
            statuses.append(response.status_code)
            assert response.status_code < 500, f"{case.path} {case.query}: {response.text}"
            if operation.path == "/healthz":  # noqa: B023  # run in this iteration
                return
            if not with_key:
                assert response.status_code == 401, response.text
            else:
                # negative cases may break the credentials too (schemathesis mutates security)
                assert mode == GenerationMode.NEGATIVE or response.status_code != 401
                assert "application/json" in str(response.headers.get("content-type"))

        try:
            run()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE, operation.path
    assert statuses
