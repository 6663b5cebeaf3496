"""Tasks out of the hub: ONNX export of source + deltas, and portable task bundles between hubs."""
