"""AWS backends: Rekognition (detector), Titan Multimodal Embeddings (embedder), S3 (source),
OpenSearch Serverless / managed / self-hosted (index), and the AOSS setup command.

Submodules are imported on demand so that the offline app never needs AWS libraries loaded."""
