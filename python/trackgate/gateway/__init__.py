"""The HTTP gateway: `App` (app.py) wires a worker's collaborators and routes requests; each ingestion
endpoint is the shared flow of ingest.py with its own decoder (track.py); answers.py shapes the answers,
refusals.py names why a request is refused and logs it; body.py, cors.py, client.py and redirects.py
hold one policy each."""

import logging

# The gateway's log, named after the module Granian serves, as logging configurations name it.
log = logging.getLogger("trackgate.http")
