"""The Flask floor of issue 14: Flask parses the JSON body and answers a constant JSON body.

What any Flask server pays per request before it does anything of its own (routing, request
and response objects, JSON in and out), so our server's ratio to it is what our features cost.
bench/servers.py runs it on gunicorn with the same sync workers as the naive app.
"""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask(__name__)
ANSWER = {"model": "lr", "version": 1, "predictions": [1], "request_id": "0123456789abcdef"}


@app.post("/v1/models/<name>/predict")
def predict(name: str):
    request.get_json()
    return jsonify(ANSWER)


@app.get("/")
def ready():  # the bench waits for a 200 here
    return "ok"
