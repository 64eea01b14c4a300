"""Serve this page on localhost: ``python serve.py --model ../../runs/<run>/generator.onnx [--port 8000]``.

Plain ``http.server``, bound to 127.0.0.1 only, serving this folder (index.html, main.js, node_modules/ after
``npm ci``) with the exported model at ``/generator.onnx`` and ``examples/onnx_metadata.mjs`` (which the Node example
shares) at ``/onnx_metadata.mjs``. It sets the MIME types that browsers insist on for
JavaScript modules and WebAssembly, whatever the machine's mime.types says.
"""

from __future__ import annotations

import argparse
import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_ROUTE = "/generator.onnx"
SHARED_MODULE = HERE.parent / "onnx_metadata.mjs"  # reads the model's metadata, for this page and examples/node


class PageHandler(SimpleHTTPRequestHandler):
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
    }

    def __init__(self, *args, model: Path, **kwargs):
        self.model = model
        super().__init__(*args, directory=str(HERE), **kwargs)

    def translate_path(self, path: str) -> str:
        route = path.split("?", 1)[0]
        if route == MODEL_ROUTE:
            return str(self.model)
        if route == "/" + SHARED_MODULE.name:
            return str(SHARED_MODULE)
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # a re-exported model is picked up on reload
        super().end_headers()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the .onnx file written by export.py")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port)")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model} does not exist; export a run first: python export.py RUN_DIR")
    if not (HERE / "node_modules" / "onnxruntime-web").is_dir():
        parser.error(f"{HERE}/node_modules/onnxruntime-web is missing; run `npm ci` in {HERE} first")
    handler = functools.partial(PageHandler, model=args.model.resolve())
    with ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        # The first line tells a caller (the end-to-end test) which port was taken.
        print(f"serving http://127.0.0.1:{server.server_port}/", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
