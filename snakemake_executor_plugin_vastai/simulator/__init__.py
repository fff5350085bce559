"""A local Vast.ai: REST API, marketplace, instances as SSH sandboxes, faults, ground truth."""
