"""A deliberately weakened site: `fedonco client` whose pairwise masks and confirmations are NOT
bound to the round it was sent (``client.app.round_digest`` returns b"", as before the binding of
``common.secagg.mask_context``). The positive control of tests/integration/test_lying_server.py:
the model-split attack must win against it. Never shipped; run as a script by that test:

    python tests/integration/weakened_site.py --config ... --site A --server HOST:PORT ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import client.app  # noqa: E402
from bench.cli import main  # noqa: E402

client.app.round_digest = lambda tensors, scalars: b""

if __name__ == "__main__":
    sys.exit(main(["client", *sys.argv[1:]]))
