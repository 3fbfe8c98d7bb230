"""The module Granian serves (`trackgate.http:app`, as `trackgate serve` runs it): one App per worker
process, wired in its `__rsgi_init__` (see trackgate.gateway)."""

from trackgate.gateway.app import App

app = App()
