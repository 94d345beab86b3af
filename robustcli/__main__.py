"""``python -m robustcli ...``: the ``robust`` command where its console script is not installed
(e.g. the package on ``PYTHONPATH`` only)."""

from robustcli.cli import main

if __name__ == "__main__":
    main()
