"""The command line: parse options, build a request, call one function (entry is the console script)."""
