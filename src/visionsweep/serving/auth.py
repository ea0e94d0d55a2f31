"""The optional API key: ``Authorization: Bearer <key>``, compared in constant time."""
from __future__ import annotations

import hmac
from typing import Callable

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# auto_error off: a missing or malformed header gets our 401 with its fix, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="The server's API key (visionsweep serve --api-key-env)")


def require_api_key(key: str) -> Callable[..., None]:
    """A FastAPI dependency that refuses, with 401, a request without ``key`` as its bearer token."""
    expected = key.encode()

    def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> None:
        # compare_digest takes as long whatever the first difference: the time does not tell the key
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
            if credentials is not None:
                problem = "the API key is wrong"
            elif "authorization" in request.headers:
                problem = "the Authorization header is not 'Bearer <key>'"
            else:
                problem = "no API key was sent"
            raise HTTPException(401, f"{problem}; send the header 'Authorization: Bearer <key>' with the key "
                                     "the server was started with", headers={"WWW-Authenticate": "Bearer"})

    return check
