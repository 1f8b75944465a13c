"""`energytta-serve`: one model per process behind an HTTP API with dynamic batching,
a bounded queue and metrics, plus a web page (docs/serving.md).

Modules: `options` (knobs), `request` (body checks), `engine` (the model side),
`batcher` (dynamic batching), `metrics`, `encode` (answers), `app` (routes), `server`
(uvicorn, graceful shutdown), `cli`.
"""
