"""The service core shared by the HTTP API (`app/`) and the workers (`workers/`).

Settings, request/response schemas, the job store in Redis, the queue producer and its
task names, logging, metrics, domain errors and the engine registry. Importing it
loads neither torch nor FastAPI/Starlette: `models/` is reached only inside functions
that need the ML stack, and nothing here knows about HTTP. `app/` and `workers/` both
build on it and never import each other (the import contracts in pyproject.toml).
"""
