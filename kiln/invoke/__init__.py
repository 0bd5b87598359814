"""The data plane: concurrency leases (counting), warm-environment assignment, synchronous
invokes, and the queue behind Event (async) invokes."""
