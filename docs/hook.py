"""The README walk-through's webhook receiver: POST /ok answers 204, POST
/reject 422, GET serves a page for the scrape job."""

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        print("webhook", self.path, self.headers["webhook-id"], body.decode(), flush=True)
        self.send_response(422 if self.path == "/reject" else 204)
        self.end_headers()

    def do_GET(self):
        page = (b'<html><head><title>Acme</title><meta name="description" content="Acme widgets">'
                b'</head><body><a href="/about">About</a> sales@acme.example</body></html>')
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", 18511), Hook).serve_forever()
