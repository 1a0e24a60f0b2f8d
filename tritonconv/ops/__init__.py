"""One folder per operator, each with the same roles:

- ``spec.py``: the frozen description of a call (shapes, validation, cost, tuning key fields) and what
  the Triton kernels cannot take (``triton_unsupported``: those calls go to the fallback with the reason);
- ``kernels.py``: the Triton kernels;
- ``launch.py``: their launchers (allocation, grids, the tiles' candidates and defaults);
- ``reference.py``: the published formulation in plain torch (the fallback and the float64 oracle);
- ``adapter.py``: the operator as everything drives it (``tritonconv.adapter.Adapter``): its
  ``dispatch.Operator``, how to run each Triton kernel and the fallback on named tensors, and for the
  tuner, the perf suite and the audit its shape sets, workloads and the dense conv it replaces;
- ``op.py``: the torch operators (``_op.define_op``: typed schema, fake shapes) and the autograd Function
  around them (``_op.training_function``), whose bodies run the adapter's passes (``_op.run_forward``);
- ``layer.py``: the nn.Module users build models from.

Layers built on another operator's kernels keep only their own roles: ``ghost`` (the Ghost module on
the depthwise kernels), ``linearconv`` and ``rotflip`` (a filter bank composed per call, then one dense
conv through the HetConv operator with p=1, or cuDNN). ``registry.py`` lists every adapter.
"""
