"""Benchmark harness: engines to time, interleaved timing, result tables (``quantbalance bench``).

It measures what ``deploy`` builds and sits above it: ``engines`` (the rows: quantbalance's
engines and the peers), ``benchmark`` (a task's run), ``result`` (rows, ratios, machine facts),
``onnx_file`` (timing any ONNX file).
"""
