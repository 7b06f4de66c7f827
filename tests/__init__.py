"""fr's test suite: a package, so that shared code is `tests.helpers` and spawned workers can import test modules."""
