"""Schema fuzzing: schemathesis generates requests from the served OpenAPI schema (arbitrary
values wherever the schema allows them: unknown models, huge or odd numbers, any strings) and
sends them to a real server; no response may be a 5xx."""

from __future__ import annotations

import json
import urllib.request

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the fuzz run needs schemathesis (pip install -e .[test])")
pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e .[serve])")
from hypothesis import HealthCheck, settings

from lightseek.data.tokenizer import Tokenizer
from lightseek.model.checkpoint import load_model
from lightseek.serve.app import EngineHost, build_app
from lightseek.serve.engine import Engine
from tests.serve.test_api import start


@pytest.fixture(scope="module")
def fuzz_url(debug_checkpoint):
    model = load_model(debug_checkpoint)
    host = EngineHost(Engine(model, Tokenizer.load(debug_checkpoint / "tokenizer.json"), max_slots=4,
                             max_waiting=64))
    srv, thread, url = start(build_app(host, "debug"))
    yield url
    srv.should_exit = True
    thread.join(timeout=5)
    host.close()


def test_no_request_gets_a_server_error(fuzz_url) -> None:
    """Every operation of the served schema, 25 generated requests each; the server answers
    each with a status below 500."""
    from hypothesis import given

    with urllib.request.urlopen(f"{fuzz_url}/openapi.json", timeout=10) as r:
        raw = json.loads(r.read())
    schema = schemathesis.openapi.from_dict(raw)
    seen = []
    def fuzz(op) -> None:
        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:
            response = case.call(base_url=fuzz_url, timeout=30)
            assert response.status_code < 500, (op.label, case.body, response.status_code, response.text[:300])
            seen.append(response.status_code)

        run()

    for result in schema.get_all_operations():
        fuzz(result.ok())
    assert len(seen) >= 25 * 5 and any(code >= 400 for code in seen) and any(code == 200 for code in seen)
