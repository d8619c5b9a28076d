"""``python -m async_executor``: the ``async-executor`` command line."""

from async_executor._cli import main

if __name__ == "__main__":
    main()
