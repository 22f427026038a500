"""Serve "hello" on port 8000 (``python -m hello_py``)."""

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    """Answers every GET with one line."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = b"hello from dualbuild\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("", 8000), Hello).serve_forever()
