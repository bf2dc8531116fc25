"""Sub-commands of the ``deltagate`` CLI, one module per area; heavy imports stay inside functions."""
