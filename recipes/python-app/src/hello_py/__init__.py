"""hello-py: the application of the python-app example recipe."""
