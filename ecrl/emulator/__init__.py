"""The testbed's data-plane emulator: what runs where the GPU and Triton would.

No GPU and no container runtime exist on the testbed, so the kwok pods of the inference
Deployment run nothing. This process stands in for their data plane, speaking the real
protocols so every client is the real one:

- ``http_api`` / ``grpc_api``: the KServe v2 / Triton inference protocol over HTTP (binary
  tensor extension) and gRPC (``tritonclient``'s own generated service), model metadata,
  config, statistics and the model-repository API (load-with-config);
- ``pod`` / ``fleet``: each ready pod emulated per request in real time from the twin's
  calibration profile (CPU stage, dynamic batcher, instances, GPU time-slicing), behind a
  Service that picks a random ready pod;
- ``exposition``: Triton metrics per pod and DCGM metrics per GPU, labelled ``emulated="true"``,
  with Prometheus file_sd targets;
- ``kube``: watches the Deployment's pods on the real apiserver and writes kwok usage
  annotations so metrics-server and the real HPA see the emulated CPU load.

Run ``python -m ecrl.emulator --help``.
"""
