"""Code the tests share, importable by name (spawned worker processes re-import what they run).

Test functions get shared resources as fixtures (tests/conftest.py: record directories, the multi-process
runner, the tiny run, ONNX export); code that cannot take fixtures (module-level constants, helpers called
inside a spawned worker) imports from here.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
