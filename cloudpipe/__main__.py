"""`python -m cloudpipe` (and `torchrun -m cloudpipe`) runs the command-line tool."""

from cloudpipe.cli import main

if __name__ == "__main__":
    main()
