"""`python -m midre.cli` = the `midre` command."""
from . import console_main

if __name__ == "__main__":
    console_main()
