"""Hardware facts: the shipped catalog (GPUs, CUDA -> driver) and detection of this machine."""
