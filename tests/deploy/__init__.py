"""The ONNX export tests, a package so that their conftest.py does not shadow the root one
(test modules import ``run_tool`` and the like with ``from conftest import``)."""
