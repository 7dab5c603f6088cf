"""Runs localstripe (PyPI, GPL-3.0) as a separate process on loopback, for the offline payment
sandbox. Executed with its own virtualenv (.tools/localstripe-venv); nothing in orcapulse_billing
imports it.

localstripe's own CLI binds every interface and pickles its store to /tmp/localstripe.pickle;
this wrapper binds 127.0.0.1 only and keeps the store in memory, or in the file given by --store
(the run command keeps it next to the embedded database, so saved cards survive restarts).

    .tools/localstripe-venv/bin/python sandbox/localstripe_server.py --port 8420 [--store data/localstripe.pickle]
"""

import argparse
import pickle

from aiohttp import web
from localstripe import resources
from localstripe.server import app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--store", help="file to keep the sandbox's data in (default: memory only)")
    args = parser.parse_args()

    def dump(store) -> None:
        if args.store:
            with open(args.store, "wb") as fh:
                pickle.dump(dict(store), fh, protocol=pickle.HIGHEST_PROTOCOL)

    resources.Store.dump_to_disk = dump
    if args.store:
        try:
            with open(args.store, "rb") as fh:
                dict.update(resources.store, pickle.load(fh))
        except FileNotFoundError:
            pass
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
