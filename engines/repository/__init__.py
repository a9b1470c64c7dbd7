"""A Triton-layout model repository: reading and checking config.pbtxt, loading each
version (backend, instances, scheduler) and warming it up."""
