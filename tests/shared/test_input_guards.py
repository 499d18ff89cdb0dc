"""The 422 an HTTP service documents is the one it sends (issue 11, item 7 and its docs)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.input_guards import install_input_guards


class Signup(BaseModel):
    email: str
    password: str


def test_the_documented_422_has_no_input_and_neither_has_the_one_sent():
    app = FastAPI()

    @app.post("/signup")
    async def signup(body: Signup) -> None:
        return None

    install_input_guards(app)
    documented = app.openapi()["components"]["schemas"]["ValidationError"]
    assert set(documented["properties"]) == {"loc", "msg", "type"}
    assert set(documented["required"]) == {"loc", "msg", "type"}
    sent = TestClient(app).post("/signup", json={"email": 1, "password": "Hunter-2-secret"})
    assert sent.status_code == 422 and "Hunter-2-secret" not in sent.text
    assert all(set(entry) == {"loc", "msg", "type"} for entry in sent.json()["detail"])
