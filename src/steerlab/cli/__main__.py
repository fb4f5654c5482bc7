"""``python -m steerlab.cli``: the same as the ``steerlab`` command."""

from steerlab.cli.app import main

if __name__ == "__main__":
    main()
