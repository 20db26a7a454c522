"""The build: sync, the scheduler and its budget, submit, collect, outputs, usage."""
