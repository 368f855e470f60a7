"""The naive contestant of issue 6: Flask that does json -> numpy -> predict -> jsonify.

No validation, metrics, logs, routing or hot swap: what a first Flask wrapper around a model
looks like. `NAIVE_MODEL` names a joblib artifact; the model is loaded once per worker (at
import). bench/servers.py runs it on gunicorn with the same sync workers as our server.
"""

from __future__ import annotations

import os

import joblib
import numpy as np
from flask import Flask, jsonify, request
from threadpoolctl import threadpool_limits

threadpool_limits(1)
app = Flask(__name__)
model = joblib.load(os.environ["NAIVE_MODEL"])


@app.post("/v1/models/<name>/predict")
def predict(name: str):
    features = np.asarray(request.get_json()["instances"], dtype=np.float64)
    return jsonify({"predictions": model.predict(features).tolist()})


@app.get("/")
def ready():  # the bench waits for a 200 here
    return "ok"
