"""Federated methods as objects (issue 27): the ``Strategy`` protocol both round loops drive, the
typed ``FitInstructions`` a site trains by, the built-in strategies and the in-process simulator.

Importing the package registers the built-in strategies (a new one: a module here with a
``@register``-ed class, named below, and its row in ``common/methods.py``).
"""

from common.fl import fedadam, scaffold, strategies  # noqa: F401  (registers the built-in strategies)
