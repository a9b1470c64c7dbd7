"""The gRPC front door: ``inference.GRPCInferenceService`` (decode, call the request path
or the engine, encode), health and reflection."""
