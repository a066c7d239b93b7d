"""Services of the test harness from the command line.

python -m hafen.testing azurite      # one Azurite until Ctrl-C; prints its connection string
python -m hafen.testing moto PORT    # moto's S3 server on PORT (what MotoS3.start runs)
"""

from __future__ import annotations

import contextlib
import sys
import time


def main(argv: list[str]) -> int:
    if argv[:1] == ["azurite"]:
        from hafen.testing._azurite import running_azurite

        with running_azurite() as server, contextlib.suppress(KeyboardInterrupt):
            print(
                f"export AZURE_STORAGE_CONNECTION_STRING='{server.connection_string}'", flush=True
            )
            while True:
                time.sleep(3600)  # until Ctrl-C
        return 0
    if argv[:1] == ["moto"] and len(argv) == 2:
        from hafen.testing._moto import serve

        serve(int(argv[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
