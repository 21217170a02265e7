"""``python -m worldlm``: the ``worldlm`` command (what ``worldlm run --workers`` starts)."""

from worldlm.cli import main

main()
