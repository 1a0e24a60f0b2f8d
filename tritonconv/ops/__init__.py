"""One folder per operator, each with the same roles: spec, reference, kernels, launch, op (torch
registration and dispatch)."""
