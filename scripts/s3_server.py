"""The local S3-compatible server for tests and demos: moto, with conditional
writes made atomic.

Real S3 decides a create-only PUT (If-None-Match: *) or an If-Match PUT
atomically. moto checks the condition, then writes, in a threaded server: two
racing create-only PUTs of one key can both succeed (measured: about 1 race in
1,200 under load). sluice's protocol rests on that atomicity (Lance's manifest
commits, claims, decisions), so the test server must provide it: every object
PUT and multipart completion runs under one lock. Arguments are moto_server's.
"""
import functools
import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

_LOCK = threading.Lock()


def _atomic(handler):
    @functools.wraps(handler)
    def locked(self, *args, **kwargs):
        with _LOCK:
            return handler(self, *args, **kwargs)

    return locked


for name in ("_key_response_put", "_key_response_post"):
    if not hasattr(S3Response, name):
        sys.exit(f"s3_server.py: moto's S3Response has no {name}; update the patch for this moto version")
    setattr(S3Response, name, _atomic(getattr(S3Response, name)))

if __name__ == "__main__":
    main()
