"""nachbar-ai's model layer: registry, model files, tokenization, image preprocessing, ONNX
sessions, pooling, dynamic batching and reranking.

The server talks to `nachbar.ai.models.ModelManager`; errors are in `nachbar.ai.errors`.
Submodules are imported on demand so that `nachbar.ai.build` does not pay for onnxruntime.
"""
