"""`dchml serve`: a retrieval API and a search page over a trained model.

- `service`: the model, the data set's catalog and one HammingIndex per modality, built once;
- `queries`: captions, uploaded images, feature vectors and items -> codes;
- `catalog`: items as a client sees them, and their images (only those the data set lists);
- `imaging`: untrusted image bytes -> checked pixels, re-encoded thumbnails;
- `gate`: host check, content types, body limits and security headers, before any parsing;
- `api`: the FastAPI routes and the JSON error shape; `static/`: the page;
- `command`: the command line (binds, loads, runs uvicorn); `limits`: every size accepted.

The web stack (FastAPI, uvicorn, python-multipart) is imported only when a server is made, so the
rest of dchml does not need it.
"""


def cmd_serve(args, argv):
    from .command import run

    return run(args, argv)
