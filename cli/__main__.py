"""``python -m snowhub_cli``: the ``snowhub`` command line, for launchers that start a module, e.g.
``torchrun --nproc-per-node 4 -m snowhub_cli add-task NAME --data DIR`` (``docs/distributed.md``)."""

from snowhub_cli.entry import main

if __name__ == "__main__":
    main()
