"""The synchronous authorization API: an HTTP gateway in front of the running scoring flow.

* `settings`: the API's own settings (deadline, stand-in decision, API key, flow staleness).
* `gateway`: hands a validated transaction to the flow over the bus and waits for the flow's decision.
* `app`: the routes, request parsing, responses, Prometheus metrics and the OpenAPI document.
* `server`: starts the application on uvicorn (uvloop + httptools).

docs/api.md has the design, the timeouts and how to scale it out.
"""
