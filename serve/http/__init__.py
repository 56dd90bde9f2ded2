"""The HTTP/REST adapter (Starlette on uvicorn)."""
