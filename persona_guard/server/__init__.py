"""``persona-guard serve``: an OpenAI-compatible chat server that reads persona traits on every answer.

Modules: :mod:`.protocol` (request validation, response bodies), :mod:`.engine` (batched generation
with readings from its own forwards), :mod:`.policy` (thresholds, calibration, actions),
:mod:`.observe` (metrics, audit log, webhook, dashboard feed), :mod:`.app` (the FastAPI app and
its batching worker), :mod:`.upstream` (monitoring a model served elsewhere). See docs/serving.md.
"""
