"""The serving API (``pillsnap serve``): FastAPI + uvicorn over a verified release.

``settings`` (pydantic-settings: flags > env > .env > config), ``model`` (the immutable
served model: verify, load, warm up), ``manager`` (start-up source, atomic reload),
``batching`` (dynamic batches off the event loop), ``service`` (the request path),
``images`` (upload validation), ``middleware`` / ``metrics`` (pure ASGI), ``app``
(thin routes), ``cli``. Nothing heavy is imported here.
"""
