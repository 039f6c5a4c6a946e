"""The usual way to serve a model, as the baseline of bench/serve.py: a Starlette app under
uvicorn (one process) that decodes each upload and runs one torch forward pass per request, in
Starlette's thread pool (what a FastAPI `def` endpoint does).

    CNNPIPE_BENCH_MODEL=models/model.pt python -m uvicorn plain_server:app --app-dir bench
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cnnpipe.core import preprocess
from cnnpipe.model import checkpoint
from cnnpipe.model.inference import probabilities

torch.set_num_threads(len(os.sched_getaffinity(0)))
MODEL, CARD, _ = checkpoint.load(Path(os.environ["CNNPIPE_BENCH_MODEL"]))


def classify(data: bytes) -> dict:
    pixels = preprocess.load(data, CARD.image_size, CARD.channels)
    p = probabilities(MODEL, CARD, pixels[None])[0]
    best = int(p.argmax())
    return {"label": CARD.classes[best], "confidence": float(p[best])}


async def predict(request: Request) -> JSONResponse:
    form = await request.form()
    data = await form["file"].read()
    return JSONResponse(await run_in_threadpool(classify, data))


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
