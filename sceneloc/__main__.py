"""`python -m sceneloc` (and `torchrun -m sceneloc`): the same command line as `sceneloc`."""

from sceneloc.cli import main

if __name__ == "__main__":
    main()
