"""`python -m cli ...`: the same as `taesar ...`."""

from cli import main

main()
